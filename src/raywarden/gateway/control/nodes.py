"""Node enrollment over the gateway: ``join`` (credential: a join token); ``peers``, ``leave``, ``renew`` and
``restarted`` (credential: the node secret handed out at join). All are anonymous routes: the credential is in
the body.

Every answer, refusals included, is audited by the gateway's request record; successful joins, leaves,
renewals and restarts also get a ``kind: node`` record of their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from raywarden.cluster import admission, node_renewal
from raywarden.errors import RaywardenError
from raywarden.files import ensure_private_dir
from raywarden.gateway.control import ControlHandler, ControlRequest, ControlResponse, ControlServices
from raywarden.gateway.locks import KeyedLocks
from raywarden.identity.node_records import NodeRegistryError
from raywarden.identity.nodes import NodeRegistry
from raywarden.identity.store import IdentityStore

log = logging.getLogger("raywarden.gateway")

# Wrong tokens from one source address: after this many in the window, that source is refused outright.
MAX_FAILURES = 10
FAILURE_WINDOW_S = 600.0


class FailureLimiter:
    """Counts refused enrollment attempts per source address in identity.db, so that every gateway worker
    counts the same attempts (one limit per address, however many workers share the listener)."""

    def __init__(self, store: IdentityStore, limit: int = MAX_FAILURES, window_s: float = FAILURE_WINDOW_S) -> None:
        self.store = store
        self.limit = limit
        self.window_s = window_s

    def blocked(self, source: str) -> bool:
        return self.store.failures_since(f"node-source:{source}", time.time() - self.window_s) >= self.limit

    def failed(self, source: str) -> None:
        self.store.record_failure(f"node-source:{source}", time.time())


def handlers(services: ControlServices) -> dict[str, ControlHandler]:
    registry = NodeRegistry.open(services.state.identity_db)
    limiter = FailureLimiter(services.store)
    # One enrollment change at a time, in every worker: the registry and the firewall sets move together.
    ensure_private_dir(services.state.run_dir)
    lock = KeyedLocks(services.state.run_dir, "node-registry")

    async def guarded(
        request: ControlRequest, event: str, work: Callable[[], tuple[dict[str, Any], dict[str, Any]]]
    ) -> ControlResponse:
        if limiter.blocked(request.source):
            return ControlResponse(
                429,
                {"error": "too many failed attempts from this address; try later"},
                {"event": event, "reason": f"rate limited: {request.source}"},
            )
        try:
            async with lock.holding("nodes"):
                body, audit = await asyncio.to_thread(work)
        except NodeRegistryError as exc:
            if exc.retry_after_s is None:  # "wait your turn" is not a failed attempt
                limiter.failed(request.source)
            answer: dict[str, Any] = {"error": exc.public}
            if exc.hint:
                answer["hint"] = exc.hint
            if exc.retry_after_s is not None:
                answer["retry_after_s"] = round(exc.retry_after_s, 1)
            return ControlResponse(exc.status, answer, {"event": event, "reason": exc.reason})
        except RaywardenError as exc:
            log.error("%s failed: %s", event, exc.diagnostics())
            return ControlResponse(
                500,
                {"error": f"{event} failed on the head; see its gateway log"},
                {"event": event, "reason": exc.message},
            )
        await services.audit.append_async(
            {"kind": "node", **audit, "source": request.source, "request_id": request.request_id}
        )
        return ControlResponse(200, body, {"event": event, "node": audit.get("node")})

    async def join(request: ControlRequest) -> ControlResponse:
        def work() -> tuple[dict[str, Any], dict[str, Any]]:
            parsed = admission.parse(admission.JoinRequest, request.body)
            return admission.admit(services.state, services.config, registry, parsed, request.source)

        return await guarded(request, "node.join", work)

    async def peers(request: ControlRequest) -> ControlResponse:
        def work() -> tuple[dict[str, Any], dict[str, Any]]:
            auth = admission.parse(admission.NodeAuth, request.body)
            return admission.peers(services.state, registry, auth), {"event": "node.peers", "node": auth.name}

        return await guarded(request, "node.peers", work)

    async def leave(request: ControlRequest) -> ControlResponse:
        def work() -> tuple[dict[str, Any], dict[str, Any]]:
            auth = admission.parse(admission.NodeAuth, request.body)
            audit = admission.leave(services.state, registry, auth)
            return {"left": True, "name": auth.name}, audit

        return await guarded(request, "node.leave", work)

    async def renew(request: ControlRequest) -> ControlResponse:
        def work() -> tuple[dict[str, Any], dict[str, Any]]:
            parsed = admission.parse(node_renewal.RenewRequest, request.body)
            return node_renewal.renew(services.state, services.config, registry, parsed, request.source)

        return await guarded(request, "node.cert.renew", work)

    async def restarted(request: ControlRequest) -> ControlResponse:
        def work() -> tuple[dict[str, Any], dict[str, Any]]:
            report = admission.parse(node_renewal.RestartReport, request.body)
            return node_renewal.restarted(registry, report, request.source)

        return await guarded(request, "node.restarted", work)

    return {
        "raywarden.node.join": join,
        "raywarden.node.peers": peers,
        "raywarden.node.leave": leave,
        "raywarden.node.renew": renew,
        "raywarden.node.restarted": restarted,
    }

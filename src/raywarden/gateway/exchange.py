"""One request's record: what it asked for (canonical), who asked, what was decided, and how it ended.

Every request gets exactly one decision record (``kind: request``, decision ``allow``, ``deny`` or ``error``)
and one outcome record (``kind: outcome``, the status sent), whatever happens: the app's last-resort handler
writes whichever is missing. The decision record is durable before anything is forwarded or answered
(principle 5); the outcome record is submitted to the next group commit and the answer does not wait for it.
Both carry the request's W3C trace (gateway/trace.py).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Scope

from raywarden.gateway.auditsink import AuditSink
from raywarden.gateway.authn import Identity
from raywarden.gateway.request import Target
from raywarden.gateway.responses import DecisionWord, Refusal
from raywarden.gateway.route_model import Route
from raywarden.gateway.trace import Trace, trace_of
from raywarden.policy.engine import PolicyEngine

# The audit record names the credential that authenticated the request (never the credential itself).
# Field names avoid "token"/"credential", which the audit writer redacts as secrets.
_CREDENTIAL_FIELD = {
    "certificate": "cert_serial",
    "token": "jti",
    "oidc": "oidc_jti",
    "session": "session_ref",
    "api_key": "key_id",  # Serve's API keys: the id only (identity/apikeys.py)
}
MAX_RAW_IN_RECORD = 512
# Which gateway worker decided (several share the listener): after a crash, whose requests were in flight.
_PID = os.getpid()


@dataclass
class Exchange:
    audit: AuditSink
    # The policy set this request is decided under, even if a reload swaps the app's engine meanwhile.
    engine: PolicyEngine
    request_id: str
    method: str
    source: str
    raw_path: str
    raw_query: bytes
    started: float
    trace: Trace
    websocket: bool = False
    path: str | None = None  # the canonical path, once parsed
    target: Target | None = None  # the canonical path and query, once both are parsed and checked
    route: Route | None = None
    identity: Identity | None = None
    action: str | None = None
    resource: str | None = None
    policy_ids: tuple[str, ...] = ()
    # What the decision was made on, so that `raywarden policy explain --request-id` can replay it.
    policy_input: dict[str, Any] | None = None
    decided: bool = False  # the decision record is written
    finished: bool = False  # the outcome record is written
    extra: dict[str, Any] = field(default_factory=dict)
    # For the gateway's metrics (gateway/telemetry.py): the decision word and status recorded, and seconds
    # spent per stage (authentication, decision, audit, upstream).
    decision: DecisionWord | None = None
    status: int | None = None
    stages: dict[str, float] = field(default_factory=dict)

    def spent(self, stage: str, since: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + time.monotonic() - since

    @classmethod
    def begin(cls, scope: Scope, audit: AuditSink, engine: PolicyEngine) -> Exchange:
        client = scope.get("client")
        raw = scope.get("raw_path") or str(scope.get("path", "")).encode()
        return cls(
            audit=audit,
            engine=engine,
            request_id=uuid.uuid4().hex,
            method=str(scope.get("method", "GET")),
            source=client[0] if client else "unknown",
            raw_path=raw.decode("latin-1")[:MAX_RAW_IN_RECORD],
            raw_query=bytes(scope.get("query_string", b"")),
            started=time.monotonic(),
            trace=trace_of(scope),
            websocket=scope.get("type") == "websocket",
        )

    def elapsed_ms(self) -> float:
        return round((time.monotonic() - self.started) * 1000, 3)

    # -- the two records -------------------------------------------------------------------------------------

    async def allow(self) -> None:
        """The allow, durable before the request is forwarded or answered."""
        await self._decision("allow", None)

    async def decided_by_handler(self, allowed: bool, status: int, **fields: Any) -> None:
        """Anonymous routes (sign-in, enrollment): the handler checked the credential in the body."""
        self.extra.update(fields)
        word: DecisionWord = "allow" if allowed else "error" if status >= 500 else "deny"
        await self._decision(word, status)

    async def refuse(self, refusal: Refusal) -> None:
        """A refusal: the decision record (unless the request was already allowed), durable before the answer,
        and the outcome record right behind it (the log keeps submission order). The outcome holds the status
        sent, and the refusal's own when Ray's job client is sent another (gateway/refusals.py)."""
        await self._decision(refusal.decision, refusal.status, reason=refusal.reason)
        refused = refusal.status if refusal.sent_status != refusal.status else None
        await self.finish(refusal.sent_status, reason=refusal.reason, refusal_status=refused)

    async def client_gone(self, status: int, reason: str, outcome: str, bytes_received: int) -> None:
        """The client left mid-request (gateway/bodies.py ClientGone): no answer is sent; the records say so."""
        await self._decision("deny", status, reason=reason)
        await self.finish(status, reason=reason, outcome=outcome, bytes_received=bytes_received)

    async def settle(self, status: int, reason: str) -> None:
        """Whatever record is still missing: an error decision (none was recorded) and the outcome."""
        await self._decision("error", status, reason=reason)
        await self.finish(status, reason=reason)

    async def finish(self, status: int, **fields: Any) -> None:
        """The outcome record, submitted to the next group commit; the answer does not wait for its fsync. A
        crash can lose it only for requests in flight, which `audit verify` reports as incomplete."""
        if self.finished:
            return
        self.finished = True
        self.status = status
        record = {
            "kind": "outcome",
            "request_id": self.request_id,
            "status": status,
            "latency_ms": self.elapsed_ms(),
            **self.trace.audit_fields(),
        }
        self.audit.append_later({**record, **{k: v for k, v in fields.items() if v is not None}})

    async def _decision(self, decision: DecisionWord, status: int | None, **fields: Any) -> None:
        if self.decided:
            return
        self.decided = True
        self.decision = decision
        started = time.monotonic()
        try:
            await self.audit.append_async(self._record(decision, status, fields))
        finally:
            self.spent("audit", started)

    def _record(self, decision: DecisionWord, status: int | None, fields: dict[str, Any]) -> dict[str, Any]:
        identity = self.identity
        record: dict[str, Any] = {
            "kind": "request",
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path or self.raw_path,
            "source": self.source,
            "principal": identity.spiffe_id if identity else None,
            "auth_method": identity.auth_method if identity else None,
            "action": self.action,
            "resource": self.resource,
            "policy_ids": list(self.policy_ids),
            "policy_version": self.engine.version,
            "decision": decision,
            "status": status,
            "latency_ms": self.elapsed_ms(),
            "gateway_pid": _PID,
            **self.trace.audit_fields(),
        }
        if self.target is not None and self.target.query and self.route is not None:
            record["query"] = self.target.audit_query(self.route.query)
        elif self.target is None and self.raw_query:
            # Refused before it could be parsed: what was sent, with anything that may be a secret masked.
            record["raw_query"] = _masked(self.raw_query, self.route)
        if identity is not None:
            record[_CREDENTIAL_FIELD.get(identity.auth_method, "credential_ref")] = identity.credential_id
            if identity.minted_with is not None:
                record["minted_with"] = identity.minted_with
        if self.websocket:
            record["websocket"] = True
        if self.policy_input:
            record["policy_input"] = self.policy_input
        record.update(self.extra)
        record.update({k: v for k, v in fields.items() if v is not None})
        return record


# Query parameters that carry one-time secrets somewhere in the route table (sign-in codes, OIDC state).
_SECRET_NAMES = frozenset({b"code", b"state", b"csrf", b"token", b"id_token", b"access_token"})


def _masked(raw: bytes, route: Route | None) -> str:
    secret = _SECRET_NAMES | {n.encode() for n, kind in (route.query if route else {}).items() if kind == "secret"}
    parts = []
    for part in raw[:MAX_RAW_IN_RECORD].replace(b"#", b"&#").split(b"&"):
        name, eq, _ = part.partition(b"=")
        parts.append(name + b"=[REDACTED]" if eq and name.lstrip(b"#").lower() in secret else part)
    return b"&".join(parts).decode("latin-1").replace("&#", "#")

"""The gateway as an ASGI app: match, authenticate, decide, audit, forward (or answer), audit the outcome."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from raywarden.audit import AuditLog, AuditRecordError, AuditUnavailable
from raywarden.errors import AuthenticationError
from raywarden.gateway import responses
from raywarden.gateway.auth import Authenticator, Identity, MissingCredential
from raywarden.gateway.control import ControlHandler, ControlRequest
from raywarden.gateway.filters import (
    JOB_ACTIONS,
    FilterError,
    Viewer,
    filter_job_details,
    filter_job_list,
    refusal_for_job,
    unknown_job,
)
from raywarden.gateway.jobs import BadJobBody, JobSubmitBody, parse_submission, stamp_owner
from raywarden.gateway.paths import BadPath, canonical_path, encode_path
from raywarden.gateway.resources import Resource, context_for, principal_for, resource_for
from raywarden.gateway.responses import Refusal
from raywarden.gateway.routes import Match, match
from raywarden.gateway.upstream import Upstream, UpstreamResponse, UpstreamUnavailable
from raywarden.policy.engine import PolicyEngine, PolicyRequest

log = logging.getLogger("raywarden.gateway")
PEER_CERT_STATE_KEY = "raywarden.peer_cert_der"


@dataclass
class Exchange:
    """What is known about one request as it moves through the pipeline; becomes its audit record."""

    request_id: str
    method: str
    path: str
    source: str
    started: float
    identity: Identity | None = None
    action: str | None = None
    resource: str | None = None
    policy_ids: tuple[str, ...] = ()
    # What the decision was made on, so that `raywarden policy explain --request-id` can replay it.
    policy_input: dict[str, Any] | None = None

    def elapsed_ms(self) -> float:
        return round((time.monotonic() - self.started) * 1000, 3)

    def record(self, **fields: Any) -> dict[str, Any]:
        return {
            "kind": "request",
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "source": self.source,
            "principal": self.identity.spiffe_id if self.identity else None,
            "auth_method": self.identity.auth_method if self.identity else None,
            **_credential_field(self.identity),
            "action": self.action,
            "resource": self.resource,
            "policy_ids": list(self.policy_ids),
            **({"policy_input": self.policy_input} if self.policy_input else {}),
            "latency_ms": self.elapsed_ms(),
            **fields,
        }

    def outcome(self, status: int, **fields: Any) -> dict[str, Any]:
        return {"kind": "outcome", "request_id": self.request_id, "status": status,
                "latency_ms": self.elapsed_ms(), **fields}


class GatewayApp:
    def __init__(
        self,
        *,
        authenticator: Authenticator,
        engine: PolicyEngine,
        audit: AuditLog,
        upstream: Upstream,
        control: dict[str, ControlHandler],
        max_body_bytes: int,
    ) -> None:
        self.authenticator = authenticator
        self.engine = engine
        self.audit = audit
        self.upstream = upstream
        self.control = control
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            response = await self._http(Request(scope, receive))
            await response(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(WebSocket(scope, receive, send))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.upstream.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.upstream.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- pipeline steps shared by HTTP and WebSocket ------------------------------------------------

    def _exchange(self, scope: Scope, method: str) -> Exchange:
        client = scope.get("client")
        raw = scope.get("raw_path") or scope["path"].encode()
        return Exchange(
            request_id=uuid.uuid4().hex,
            method=method,
            path=raw.decode("latin-1")[:512],
            source=client[0] if client else "unknown",
            started=time.monotonic(),
        )

    def _authenticate(self, scope: Scope, ex: Exchange) -> Identity:
        der = scope.get("state", {}).get(PEER_CERT_STATE_KEY)
        authorization = _header(scope, b"authorization")
        hint = responses.HINT_NO_CREDENTIAL
        try:
            identity = self.authenticator.authenticate(der, authorization)
        except MissingCredential as exc:
            raise Refusal(401, "authentication required", reason=exc.reason, hint=hint) from None
        except AuthenticationError as exc:
            raise Refusal(401, "authentication failed", reason=exc.reason, hint=hint) from None
        ex.identity = identity
        return identity

    def _match(self, scope: Scope, ex: Exchange, method: str, *, websocket: bool) -> tuple[Match, str]:
        try:
            path = canonical_path(scope.get("raw_path") or scope["path"].encode())
        except BadPath as exc:
            raise Refusal(400, "malformed request path", reason=f"bad path: {exc}") from None
        found = match(method, path, websocket=websocket)
        if found is None:
            # An anonymous caller learns nothing about the route table, not even that a route is unknown.
            self._authenticate(scope, ex)
            raise Refusal(404, "no such route", reason=f"route not in the route table: {method} {path}",
                          hint="the gateway serves Ray's Jobs API only; see `raywarden --help`")
        ex.action = found.route.action
        query = scope.get("query_string", b"").decode("latin-1")
        if query:
            names = {part.partition("=")[0] for part in query.split("&") if part}
            unknown = names - found.route.query
            if unknown:
                raise Refusal(400, f"query parameter not allowed: {sorted(unknown)[0]}",
                              reason=f"unlisted query parameters {sorted(unknown)}")
        return found, query

    async def _authorize(
        self, scope: Scope, ex: Exchange, identity: Identity, found: Match, submission: JobSubmitBody | None
    ) -> tuple[Viewer, Resource]:
        """Decide; raise the refusal (403, or 404 for a job the caller may not view) when denied."""
        resource = await resource_for(found, identity, submission, self.upstream)
        entity = resource.entity
        ex.resource = f"{entity.type}::{entity.id}"
        engine = self.engine  # one set for the whole request, even if a reload swaps it meanwhile
        context = context_for(identity, ex.source, scope.get("state", {}).get(PEER_CERT_STATE_KEY),
                              _header(scope, b"authorization"))
        viewer = Viewer(engine, principal_for(identity), context)
        action = found.route.action
        decision = engine.decide(PolicyRequest(viewer.principal, action, entity, context))
        ex.policy_ids = decision.policy_ids
        ex.policy_input = {"groups": list(identity.groups), "resource_attrs": entity.attrs,
                           "context": {k: v for k, v in context.items() if k != "source"}}
        if not decision.allowed:
            if action in JOB_ACTIONS:
                raise refusal_for_job(viewer, action, entity, decision)
            raise Refusal(403, "forbidden", reason=decision.reason,
                          hint="ask an administrator for access; policies decide per action and resource")
        return viewer, resource

    async def _record_allow(self, ex: Exchange) -> None:
        # Principle 5: the decision is on disk before anything is forwarded or answered.
        await self.audit.append_async(ex.record(decision="allow", status=None, policy_version=self.engine.version))

    async def _refuse(self, ex: Exchange, refusal: Refusal) -> Response:
        await self.audit.append_async(
            ex.record(decision="deny", status=refusal.status, reason=refusal.reason, policy_version=self.engine.version)
        )
        return responses.error(refusal.status, refusal.message, ex.request_id, refusal.hint)

    # -- HTTP ------------------------------------------------------------------------------------

    async def _http(self, request: Request) -> Response:
        ex = self._exchange(request.scope, request.method)
        try:
            try:
                found, query = self._match(request.scope, ex, request.method, websocket=False)
                identity = self._authenticate(request.scope, ex) if found.route.auth == "identity" else None
                body = await self._read_body(request, found)
                if not found.route.upstream:
                    return await self._control(request.scope, ex, found, identity, body)
                assert identity is not None  # noqa: S101 - every Ray route requires an identity (routes.py)
                submission = None
                if found.route.body == "job_submit":
                    try:
                        submission = parse_submission(body or b"")
                    except BadJobBody as exc:
                        raise Refusal(400, f"invalid job submission: {exc}") from None
                    body = stamp_owner(submission, identity.spiffe_id)
                viewer, resource = await self._authorize(request.scope, ex, identity, found, submission)
            except Refusal as refusal:
                return await self._refuse(ex, refusal)
            except UpstreamUnavailable as exc:
                return await self._refuse(ex, _ray_down(exc))
            await self._record_allow(ex)
            if not resource.known:
                # Answered like a job the caller may not view, so that neither reveals which it is.
                missing = unknown_job(resource.entity.id)
                await self.audit.append_async(ex.outcome(404, reason=missing.reason))
                return responses.error(404, missing.message, ex.request_id, missing.hint)
            return await self._forward(request, ex, query, body, viewer, resource)
        except (AuditUnavailable, AuditRecordError) as exc:
            # Principle 6: a request that cannot be recorded is not served.
            log.error("audit log unavailable: %s", exc.message)
            return responses.error(503, "audit log unavailable; requests are refused until it is writable",
                                   ex.request_id, "check disk space and permissions of the audit dir")

    async def _forward(self, request: Request, ex: Exchange, query: str, body: bytes | None,
                       viewer: Viewer, resource: Resource) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        action = ex.action
        filtered = action in ("jobs.list", "jobs.read")
        if filtered:
            headers.pop("accept-encoding", None)  # the gateway must read what it filters
        path = encode_path(canonical_path(request.scope["raw_path"]))
        try:
            upstream = await self.upstream.request(request.method, path, query, headers, body)
        except UpstreamUnavailable as exc:
            down = _ray_down(exc)
            await self.audit.append_async(ex.outcome(down.status, reason=down.reason))
            return responses.error(down.status, down.message, ex.request_id, down.hint)
        shown: dict[str, int] = {}
        if filtered and upstream.status == 200:
            try:
                if dict(upstream.headers).get("content-encoding"):
                    raise FilterError("Ray sent an encoded response the gateway cannot filter")
                if action == "jobs.list":
                    data, shown = filter_job_list(viewer, upstream.body)
                else:
                    data = filter_job_details(viewer, resource.entity, upstream.body)
            except FilterError as exc:
                # Fail closed: an answer the gateway cannot filter is not relayed.
                await self.audit.append_async(ex.outcome(502, reason=str(exc)))
                return responses.error(502, "Ray's answer could not be checked", ex.request_id)
            upstream = UpstreamResponse(upstream.status, upstream.headers, data)
        await self.audit.append_async(ex.outcome(upstream.status, **shown))
        return _relay(upstream, ex)

    async def _control(self, scope: Scope, ex: Exchange, found: Match, identity: Identity | None,
                       body: bytes | None) -> Response:
        if identity is not None:
            await self._authorize(scope, ex, identity, found, None)
            await self._record_allow(ex)
        handler = self.control[found.route.action]
        result = await handler(ControlRequest(ex.request_id, ex.source, found.params, body, identity))
        record = ex.record(decision="allow" if result.status < 400 else "deny", status=result.status,
                           policy_version=self.engine.version, **result.audit)
        if identity is None:
            await self.audit.append_async(record)
        else:
            await self.audit.append_async(ex.outcome(result.status, **result.audit))
        headers = {responses.GATEWAY_HEADER[0]: responses.GATEWAY_HEADER[1], "x-request-id": ex.request_id,
                   "cache-control": "no-store"}
        return JSONResponse({**result.body, "request_id": ex.request_id}, status_code=result.status, headers=headers)

    async def _read_body(self, request: Request, found: Match) -> bytes | None:
        if found.route.body == "none":
            # A body on a route that takes none is a smuggling attempt or a client bug: refuse it.
            async for part in request.stream():
                if part:
                    raise Refusal(400, "this route takes no request body")
            return None
        limit = found.route.max_body or self.max_body_bytes
        hint = None if found.route.max_body else "raise max_body_bytes in the cluster config for larger packages"
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise Refusal(413, f"request body larger than {limit} bytes", hint=hint)
        data = bytearray()
        async for part in request.stream():
            data += part
            if len(data) > limit:
                raise Refusal(413, f"request body larger than {limit} bytes", hint=hint)
        return bytes(data)

    # -- WebSocket (log tail) -----------------------------------------------------------------------

    async def _websocket(self, ws: WebSocket) -> None:
        ex = self._exchange(ws.scope, "GET")
        try:
            try:
                found, _ = self._match(ws.scope, ex, "GET", websocket=True)
                identity = self._authenticate(ws.scope, ex)
                _, resource = await self._authorize(ws.scope, ex, identity, found, None)
                await self._record_allow(ex)
                if not resource.known:
                    missing = unknown_job(resource.entity.id)
                    await self.audit.append_async(ex.outcome(404, reason=missing.reason))
                    await _deny_upgrade(ws, missing, ex)
                    return
                upstream_ws = await self.upstream.websocket(encode_path(canonical_path(ws.scope["raw_path"])))
            except (Refusal, UpstreamUnavailable) as exc:
                refusal = exc if isinstance(exc, Refusal) else _ray_down(exc)
                await self.audit.append_async(ex.record(decision="deny" if refusal.status != 503 else "error",
                                                        status=refusal.status, reason=refusal.reason,
                                                        policy_version=self.engine.version))
                await _deny_upgrade(ws, refusal, ex)
                return
        except (AuditUnavailable, AuditRecordError):
            await ws.close(code=1011, reason="audit log unavailable")
            return
        await ws.accept()
        try:
            async for message in upstream_ws:
                if message.type.name == "TEXT":
                    await ws.send_text(message.data)
                elif message.type.name == "BINARY":
                    await ws.send_bytes(message.data)
                else:
                    break
        except WebSocketDisconnect:
            pass
        finally:
            await upstream_ws.close()
            await self.audit.append_async(ex.outcome(101))
            try:
                await ws.close()
            except RuntimeError:
                pass  # the client already closed


async def _deny_upgrade(ws: WebSocket, refusal: Refusal, ex: Exchange) -> None:
    """Refuse a WebSocket upgrade with the same HTTP status and JSON body a plain request would get."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(responses.error(refusal.status, refusal.message, ex.request_id, refusal.hint))
    else:
        # Without the ASGI denial-response extension, closing before accepting makes the server answer 403.
        await ws.close(code=1008, reason=refusal.message)


# The audit record names the credential that authenticated the request (never the credential itself).
# Field names avoid "token"/"credential", which the audit writer redacts as secrets.
_CREDENTIAL_FIELD = {"certificate": "cert_serial", "token": "jti", "oidc": "oidc_jti"}


def _credential_field(identity: Identity | None) -> dict[str, str]:
    if identity is None:
        return {}
    return {_CREDENTIAL_FIELD.get(identity.auth_method, "credential_ref"): identity.credential_id}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _relay(upstream: UpstreamResponse, ex: Exchange) -> Response:
    headers = dict(upstream.headers)
    headers.update({responses.GATEWAY_HEADER[0]: responses.GATEWAY_HEADER[1], "x-request-id": ex.request_id})
    return Response(upstream.body, status_code=upstream.status, headers=headers)


def _ray_down(exc: UpstreamUnavailable) -> Refusal:
    return Refusal(503, "Ray is not reachable behind the gateway", reason=f"upstream unavailable: {exc}",
                   hint="check `raywarden status`; start the cluster with `raywarden up`")

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
from raywarden.gateway.jobs import BadJobBody, JobSubmitBody, parse_submission, stamp_owner
from raywarden.gateway.paths import BadPath, canonical_path, encode_path
from raywarden.gateway.resources import resource_for
from raywarden.gateway.responses import Refusal
from raywarden.gateway.routes import Match, match
from raywarden.gateway.upstream import Upstream, UpstreamResponse, UpstreamUnavailable
from raywarden.policy.engine import Entity, PolicyEngine, PolicyRequest

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
            "cert_serial": self.identity.credential_id if self.identity else None,
            "action": self.action,
            "resource": self.resource,
            "policy_ids": list(self.policy_ids),
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
        self, ex: Exchange, identity: Identity, found: Match, submission: JobSubmitBody | None
    ) -> None:
        resource = await resource_for(found, identity, submission, self.upstream)
        ex.resource = f"{resource.type}::{resource.id}"
        principal = Entity(
            "User" if identity.kind == "user" else "ServiceAccount",
            identity.spiffe_id,
            {"name": identity.name},
            tuple(("Group", g) for g in identity.groups),
        )
        decision = self.engine.decide(
            PolicyRequest(principal, found.route.action, resource,
                          {"auth_method": identity.auth_method, "source_ip": ex.source})
        )
        ex.policy_ids = decision.policy_ids
        if not decision.allowed:
            reason = "no policy permits this" if not decision.policy_ids else "forbidden by policy"
            if decision.errors:
                reason += f" (evaluation errors: {'; '.join(decision.errors)})"
            raise Refusal(403, "forbidden", reason=reason,
                          hint="ask an administrator for access; policies decide per action and resource")

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
                    return await self._control(ex, found, identity, body)
                assert identity is not None  # noqa: S101 - every Ray route requires an identity (routes.py)
                submission = None
                if found.route.body == "job_submit":
                    try:
                        submission = parse_submission(body or b"")
                    except BadJobBody as exc:
                        raise Refusal(400, f"invalid job submission: {exc}") from None
                    body = stamp_owner(submission, identity.spiffe_id)
                await self._authorize(ex, identity, found, submission)
            except Refusal as refusal:
                return await self._refuse(ex, refusal)
            except UpstreamUnavailable as exc:
                return await self._refuse(ex, _ray_down(exc))
            await self._record_allow(ex)
            return await self._forward(request, ex, query, body)
        except (AuditUnavailable, AuditRecordError) as exc:
            # Principle 6: a request that cannot be recorded is not served.
            log.error("audit log unavailable: %s", exc.message)
            return responses.error(503, "audit log unavailable; requests are refused until it is writable",
                                   ex.request_id, "check disk space and permissions of the audit dir")

    async def _forward(self, request: Request, ex: Exchange, query: str, body: bytes | None) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        path = encode_path(canonical_path(request.scope["raw_path"]))
        try:
            upstream = await self.upstream.request(request.method, path, query, headers, body)
        except UpstreamUnavailable as exc:
            down = _ray_down(exc)
            await self.audit.append_async(ex.outcome(down.status, reason=down.reason))
            return responses.error(down.status, down.message, ex.request_id, down.hint)
        await self.audit.append_async(ex.outcome(upstream.status))
        return _relay(upstream, ex)

    async def _control(self, ex: Exchange, found: Match, identity: Identity | None, body: bytes | None) -> Response:
        if identity is not None:
            await self._authorize(ex, identity, found, None)
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
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            raise Refusal(413, f"request body larger than {self.max_body_bytes} bytes",
                          hint="raise max_body_bytes in the cluster config if this package is legitimate")
        data = bytearray()
        async for part in request.stream():
            data += part
            if len(data) > self.max_body_bytes:
                raise Refusal(413, f"request body larger than {self.max_body_bytes} bytes")
        return bytes(data)

    # -- WebSocket (log tail) -----------------------------------------------------------------------

    async def _websocket(self, ws: WebSocket) -> None:
        ex = self._exchange(ws.scope, "GET")
        try:
            try:
                found, _ = self._match(ws.scope, ex, "GET", websocket=True)
                identity = self._authenticate(ws.scope, ex)
                await self._authorize(ex, identity, found, None)
                await self._record_allow(ex)
                upstream_ws = await self.upstream.websocket(encode_path(canonical_path(ws.scope["raw_path"])))
            except (Refusal, UpstreamUnavailable) as exc:
                refusal = exc if isinstance(exc, Refusal) else _ray_down(exc)
                await self.audit.append_async(ex.record(decision="deny" if refusal.status != 503 else "error",
                                                        status=refusal.status, reason=refusal.reason))
                # Close before accepting: the client sees the upgrade refused (HTTP 403 from the server).
                await ws.close(code=1008, reason=refusal.message)
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

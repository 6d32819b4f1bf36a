"""The Serve listener as an ASGI app: Ray Serve's paths, behind identities, policy, limits and the audit log.

One call, top to bottom (docs/serve.md):

1. The call's ``Exchange`` (gateway/exchange.py) begins; whatever happens below becomes an audited answer,
   and every call leaves one decision record and one outcome record (never a body, never the query).
2. The path is parsed once (target.py); anything with two readings is refused (400), as is a repeated
   Authorization or Cookie field (gateway/middleware/__init__.py).
3. ``/-/healthz`` is answered here, without a credential, from the last look at Serve's proxy.
4. The caller authenticates (callers.py): 401 otherwise. A client certificate (which browsers send on their
   own) does not carry a request from a foreign page (403).
5. Serve's settings must be the pinned ones (table.py), else 503. ``/-/routes`` lists the applications the
   caller may call. The path is matched with Serve's own rule: an unknown application is 404, and Serve is
   never asked.
6. Cedar decides ``serve.invoke`` on the ``ServeApp`` (403), then the caller's and the application's rate and
   concurrency limits are taken (429 with Retry-After; limits.py), then the body is read within its bound (413).
7. The decision record, durable; then the call is forwarded and the answer streamed as Serve produces it
   (proxy.py). The outcome record: the status, the bytes each way, the time to the first byte.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from raywarden.audit import AuditRecordError, AuditUnavailable
from raywarden.config import ServeLimits
from raywarden.gateway import refusals, responses
from raywarden.gateway.auditsink import AuditSink
from raywarden.gateway.authz import Viewer, context_for, decide, principal_for
from raywarden.gateway.exchange import Exchange
from raywarden.gateway.middleware import header, single_credentials
from raywarden.gateway.responses import AUDIT_DOWN, Refusal
from raywarden.gateway.serve.callers import Caller, ServeAuthenticator
from raywarden.gateway.serve.limits import HEARTBEAT_EVERY_S, LimitStore, Over, Ticket
from raywarden.gateway.serve.proxy import (
    Counted,
    CredentialLapsed,
    ServeProxy,
    ServeUnavailable,
    read_body,
    request_headers,
)
from raywarden.gateway.serve.table import AppTable, ServeApp
from raywarden.gateway.serve.target import ServeTarget, serve_target
from raywarden.policy.engine import PolicyEngine
from raywarden.policy.serveattrs import serve_context

log = logging.getLogger("raywarden.gateway.serve")
INVOKE = "serve.invoke"
HINT_LAPSED = "your credential or your permission to call this application ended while it worked"
HINT_ROUTES = "GET /-/routes on this listener lists the applications you may call"


class OverLimit(Refusal):
    def __init__(self, over: Over) -> None:
        whose = "this application's" if over.key.startswith("app:") else "your"
        super().__init__(
            429,
            f"too many requests: {whose} {over.what} limit is reached",
            reason=f"{over.what} limit of {over.key}",
            hint=f"retry after {over.retry_after}s; limits are set per caller and per application (docs/serve.md)",
        )
        self.retry_after = over.retry_after


@dataclass(frozen=True)
class ListenerServices:
    authenticator: ServeAuthenticator
    audit: AuditSink
    table: AppTable
    limits: LimitStore
    limit_config: ServeLimits
    proxy: ServeProxy
    max_body_bytes: int


class ServeListener:
    def __init__(self, services: ListenerServices, engine: Callable[[], PolicyEngine]) -> None:
        self.s = services
        # The API listener's policy set, read per call: a reload (SIGHUP) reaches both listeners at once.
        self.engine = engine

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] in ("http", "websocket"):
            await self._recorded(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        beating: asyncio.Task[None] | None = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.s.proxy.start()
                await self.s.table.upstream.start()
                await self.s.table.start()
                beating = asyncio.get_running_loop().create_task(self._heartbeat())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if beating is not None:
                    beating.cancel()
                await self.s.table.close()
                await self.s.table.upstream.close()
                await self.s.proxy.close()
                self.s.limits.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _heartbeat(self) -> None:
        """Keep this process's concurrency slots alive while it holds them, even with no new call (a long
        stream): other processes clear the slots of a process whose heartbeat stopped (limits.py)."""
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY_S)
            try:
                self.s.limits.heartbeat()
            except sqlite3.Error as exc:
                log.warning("Serve limits: heartbeat failed: %s", exc)

    # -- the record boundary ----------------------------------------------------------------------------------

    async def _recorded(self, scope: Scope, receive: Receive, send: Send) -> None:
        ex = Exchange.begin(scope, self.s.audit, self.engine())
        # The query is the application's input, like its body: only its size is recorded.
        ex.extra.update({"listener": "serve", "query_bytes": len(ex.raw_query)})
        ex.raw_query = b""
        started: list[int] = []

        async def tracked(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.http.response.start"):
                started.append(int(message["status"]))
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*kept, (b"x-request-id", ex.request_id.encode())]}
            elif message["type"] == "websocket.accept":
                started.append(101)  # the handshake answer names the request too, for the audit log
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", ex.request_id.encode())],
                }
            await send(message)

        try:
            single_credentials(scope)
            if scope["type"] == "websocket":
                await self._websocket(ex, scope, receive, tracked)
            else:
                await self._http(ex, scope, receive, tracked)
            if not ex.finished:
                await ex.settle(started[0] if started else 500, "answered without its audit records")
        except Exception as exc:
            try:
                await self._failed(ex, exc, scope, receive, tracked, started[0] if started else None)
            except (AuditUnavailable, AuditRecordError) as audit_exc:
                log.error("audit log unavailable: %s", audit_exc.message)
                if not started:
                    await _answer(ex, AUDIT_DOWN, scope, receive, tracked)

    async def _failed(
        self, ex: Exchange, exc: Exception, scope: Scope, receive: Receive, send: Send, status: int | None
    ) -> None:
        if isinstance(exc, (AuditUnavailable, AuditRecordError)):
            raise exc
        refusal = _as_refusal(ex, exc)
        if status is not None:
            if not ex.decided:
                await ex.refuse(refusal)
            else:
                await ex.finish(status, reason=f"failed after the answer began: {refusal.reason}")
            return
        await ex.refuse(refusal)
        await _answer(ex, refusal, scope, receive, send)

    # -- the steps a call shares, HTTP or WebSocket -----------------------------------------------------------

    async def _caller(self, ex: Exchange, scope: Scope) -> Caller:
        caller = await self.s.authenticator.authenticate(scope, ex.source)
        ex.identity = caller.identity
        if caller.key_apps is not None:
            ex.extra["key_apps"] = list(caller.key_apps)
        origin = header(scope, b"origin")
        host = header(scope, b"host")
        if caller.identity.auth_method == "certificate" and origin is not None and origin != f"https://{host}":
            # A browser sends its client certificate on any page's request: a foreign page acts for nobody.
            raise Refusal(
                403,
                "cross-origin request refused",
                reason=f"certificate-authenticated request with foreign Origin {origin[:100]!r}",
                hint="call the application from its own pages, or with an API key or a bearer token",
            )
        return caller

    def _ready(self) -> None:
        snapshot = self.s.table.snapshot
        if snapshot.drift is not None:
            raise Refusal(
                503,
                "Ray Serve is not available behind the gateway",
                reason=f"Serve is not as raywarden started it: {snapshot.drift}",
                hint="`raywarden status` and `raywarden doctor` on the head say why; `raywarden down` then `up` "
                "restarts Serve on loopback",
            )

    async def _app(self, ex: Exchange, target: ServeTarget) -> ServeApp:
        app = await self.s.table.find(target.path)
        if app is None:
            raise Refusal(
                404,
                "no Serve application at this path",
                reason=f"no Serve route matches {target.path[:300]}",
                hint=HINT_ROUTES,
            )
        ex.extra.update({"app": app.name, "route_prefix": app.route_prefix})
        return app

    def _authorize(
        self, ex: Exchange, caller: Caller, app: ServeApp, method: str, path: str, model: str | None
    ) -> None:
        identity = caller.identity
        base = context_for(identity, ex.source)
        viewer = Viewer(ex.engine, principal_for(identity), serve_context(base, method, path, caller.key_apps, model))
        decision = decide(ex, viewer, INVOKE, app.entity, identity.groups)
        if not decision.allowed:
            raise Refusal(403, "forbidden", reason=decision.reason, hint=responses.HINT_ASK_ADMIN)

    def _take_limits(self, caller: Caller, app: ServeApp) -> Ticket:
        per_caller, per_app = self.s.limit_config.for_app(app.name)
        taken = self.s.limits.acquire(
            [(f"caller:{app.name}:{caller.identity.spiffe_id}", per_caller), (f"app:{app.name}", per_app)]
        )
        if isinstance(taken, Over):
            raise OverLimit(taken)
        return taken

    def _revalidator(
        self, scope: Scope, ex: Exchange, app: ServeApp, method: str, path: str
    ) -> Callable[[], Awaitable[None]]:
        """While a call streams: the caller's credential, and Cedar's decision on the application as it is now
        (its owner, groups and the caller's groups change; a job may have replaced it)."""
        model = _model_id(scope)

        async def still_valid() -> None:
            try:
                caller = await self.s.authenticator.authenticate(scope, ex.source)
            except Refusal as exc:
                raise CredentialLapsed(exc.reason) from None
            current = self.s.table.snapshot.apps.get(app.name)
            if current is None or current.route_prefix != app.route_prefix:
                raise CredentialLapsed(f"application {app.name!r} is no longer routed at {app.route_prefix}")
            identity = caller.identity
            context = serve_context(context_for(identity, ex.source), method, path, caller.key_apps, model)
            decision = Viewer(ex.engine, principal_for(identity), context).decide(INVOKE, current.entity)
            if not decision.allowed:
                raise CredentialLapsed(f"no longer allowed to call {app.name!r}: {decision.reason}")

        return still_valid

    # -- HTTP -------------------------------------------------------------------------------------------------

    async def _http(self, ex: Exchange, scope: Scope, receive: Receive, send: Send) -> None:
        target = serve_target(scope.get("raw_path") or str(scope["path"]).encode(), scope.get("query_string", b""))
        ex.path = target.path
        if target.path == "/-/healthz":
            await self._health(ex, scope, receive, send)
            return
        caller = await self._caller(ex, scope)
        self._ready()
        if target.path == "/-/routes":
            await self._routes(ex, caller, scope, receive, send)
            return
        app = await self._app(ex, target)
        method = str(scope["method"])
        self._authorize(ex, caller, app, method, app.below(target.path), _model_id(scope))
        ticket = self._take_limits(caller, app)
        try:
            body = await read_body(receive, header(scope, b"content-length"), self.s.max_body_bytes)
            await ex.allow()
            counted = Counted(bytes_in=len(body))
            headers = request_headers(scope.get("headers", []), ex.source, ex.request_id)
            url = self.s.proxy.url(target.encoded_path, target.query)
            try:
                still_valid = self._revalidator(scope, ex, app, method, app.below(target.path))
                status = await self.s.proxy.forward(method, url, headers, body, send, receive, counted, still_valid)
            except CredentialLapsed as exc:
                if counted.answered:
                    await ex.finish(200, reason=f"cut while streaming: {exc.message}", **_counts(counted))
                    return
                lapsed = Refusal(403, "no longer allowed", reason=f"before the answer: {exc.message}", hint=HINT_LAPSED)
                await ex.finish(403, reason=lapsed.reason, **_counts(counted))
                await _answer(ex, lapsed, scope, receive, send)
                return
            await ex.finish(status, **_counts(counted))
        finally:
            self.s.limits.release(ticket)

    async def _health(self, ex: Exchange, scope: Scope, receive: Receive, send: Send) -> None:
        ex.action = "serve.health"
        snapshot = self.s.table.snapshot
        healthy = snapshot.serve_up and snapshot.drift is None
        status = 200 if healthy else 503
        await ex.decided_by_handler(True, status)
        await ex.finish(status)
        await Response(b"success" if healthy else b"unavailable", status, media_type="text/plain")(scope, receive, send)

    async def _routes(self, ex: Exchange, caller: Caller, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve's route table, reduced to the applications this caller may call."""
        ex.action = "serve.routes"
        identity = caller.identity
        base = context_for(identity, ex.source)
        apps = self.s.table.visible()
        context = serve_context(base, "GET", "/", caller.key_apps, None)
        viewer = Viewer(ex.engine, principal_for(identity), context)
        decisions = viewer.decide_many([(INVOKE, app.entity) for app in apps])
        shown = {app.route_prefix: app.name for app, d in zip(apps, decisions, strict=True) if d.allowed}
        await ex.decided_by_handler(True, 200)
        await ex.finish(200, shown=len(shown), hidden=len(apps) - len(shown))
        await JSONResponse(shown)(scope, receive, send)

    # -- WebSocket --------------------------------------------------------------------------------------------

    async def _websocket(self, ex: Exchange, scope: Scope, receive: Receive, send: Send) -> None:
        target = serve_target(scope.get("raw_path") or str(scope["path"]).encode(), scope.get("query_string", b""))
        ex.path = target.path
        caller = await self._caller(ex, scope)
        self._ready()
        app = await self._app(ex, target)
        self._authorize(ex, caller, app, "WEBSOCKET", app.below(target.path), _model_id(scope))
        ticket = self._take_limits(caller, app)
        try:
            await ex.allow()
            headers = request_headers(scope.get("headers", []), ex.source, ex.request_id)
            protocols = [p for p in scope.get("subprotocols", []) if isinstance(p, str)]
            upstream = await self.s.proxy.connect_websocket(
                self.s.proxy.url(target.encoded_path, target.query), headers, protocols
            )
            ws = WebSocket(scope, receive, send)
            await ws.accept(subprotocol=upstream.protocol)
            counted = Counted()
            still_valid = self._revalidator(scope, ex, app, "WEBSOCKET", app.below(target.path))
            await self.s.proxy.relay_websocket(ws, upstream, counted, still_valid)
            await ex.finish(101, **_counts(counted), **counted.extra)
        finally:
            self.s.limits.release(ticket)


def _counts(counted: Counted) -> dict[str, Any]:
    return {
        "bytes_in": counted.bytes_in,
        "bytes_out": counted.bytes_out,
        "first_byte_ms": counted.first_byte_ms,
        "closed_by": counted.closed_by,
    }


def _model_id(scope: Scope) -> str | None:
    # Serve reads the multiplexed model id from either spelling (ray/serve/_private/proxy.py).
    value = header(scope, b"serve_multiplexed_model_id") or header(scope, b"serve-multiplexed-model-id")
    return value[:256] if value else None


def _as_refusal(ex: Exchange, exc: Exception) -> Refusal:
    if isinstance(exc, Refusal):
        return exc
    if isinstance(exc, ServeUnavailable):
        return Refusal(
            503 if "refused the WebSocket" not in exc.message else 502,
            "Ray Serve did not answer" if "refused the WebSocket" not in exc.message else exc.message,
            reason=f"Serve unavailable: {exc.message}",
            hint="retry; `raywarden status` on the head shows whether Serve is up",
        )
    return refusals.internal_error(ex, exc, log)


async def _answer(ex: Exchange, refusal: Refusal, scope: Scope, receive: Receive, send: Send) -> None:
    response: Response = refusals.response(refusal, ex)
    if isinstance(refusal, OverLimit):
        response.headers["retry-after"] = str(refusal.retry_after)
    await refusals.send(response, refusal, scope, receive, send)

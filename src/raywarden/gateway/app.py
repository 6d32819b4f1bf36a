"""The gateway as an ASGI app. A request, top to bottom (docs/architecture.md):

1. ``SecurityHeadersMiddleware`` (middleware/headers.py): every answer gets the security headers.
2. ``GatewayApp._recorded``: the request's ``Exchange`` (exchange.py) begins, and a repeated Authorization
   or Cookie field is refused (middleware/__init__.py); whatever is raised below becomes an audited answer:
   a ``Refusal`` its status, Ray unreachable a 503, an unfilterable answer a 502, anything unexpected a 500.
   Every request leaves one decision record and one outcome record.
3. ``HostMiddleware``, ``OriginMiddleware`` (middleware/host.py, origin.py): browser guards.
4. ``GatewayApp._route``: the path and query parsed once (request.py), the route matched (routes.py), and
   the handler of the route's kind called (handlers/): authenticate, decide, record, forward, record.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from raywarden.audit import AuditRecordError, AuditUnavailable
from raywarden.gateway import refusals, responses
from raywarden.gateway.auditsink import AuditSink
from raywarden.gateway.authn import Authenticator
from raywarden.gateway.bodies import ClientGone
from raywarden.gateway.control import ControlHandler
from raywarden.gateway.exchange import Exchange
from raywarden.gateway.handlers import Handler, Services, authenticate
from raywarden.gateway.handlers.console import ConsoleAnonymous, ConsolePages
from raywarden.gateway.handlers.control import Control
from raywarden.gateway.handlers.dashboard import Dashboard
from raywarden.gateway.handlers.ray_api import RayApi
from raywarden.gateway.handlers.websocket import LogTail
from raywarden.gateway.jobaccess import FilterError
from raywarden.gateway.jobrecords import JobDeletions, JobRecords
from raywarden.gateway.middleware import header, single_credentials
from raywarden.gateway.middleware.headers import SecurityHeadersMiddleware
from raywarden.gateway.middleware.host import HostMiddleware
from raywarden.gateway.middleware.origin import OriginMiddleware
from raywarden.gateway.request import Target, canonical_path, check_pairs, parse_pairs
from raywarden.gateway.responses import AUDIT_DOWN, Refusal
from raywarden.gateway.route_model import Routed, RouteKind
from raywarden.gateway.routes import ROUTES, match
from raywarden.gateway.serve.control import ServeControl
from raywarden.gateway.telemetry import RequestMetrics
from raywarden.gateway.upstream import AnswerTooLarge, Upstream, UpstreamUnavailable
from raywarden.gateway.web import Console, WebServices
from raywarden.policy.engine import PolicyEngine

log = logging.getLogger("raywarden.gateway")
EXCHANGE_KEY = "raywarden.exchange"
HINT_UNKNOWN_ROUTE = (
    "the gateway serves Ray's Jobs API, the dashboard under /dashboard/ and its console under /ui/; see docs/browser.md"
)


class GatewayApp:
    def __init__(
        self,
        *,
        authenticator: Authenticator,
        engine: PolicyEngine,
        audit: AuditSink,
        upstream: Upstream,
        control: dict[str, ControlHandler],
        max_body_bytes: int,
        max_filtered_bytes: int,
        run_dir: Path,
        shared_locks: bool = False,
        web: WebServices | None = None,
    ) -> None:
        """``run_dir`` holds what the gateway's workers share at run time: the job deletion log and, with
        ``shared_locks``, the lock files that hold a package name or submission id across workers."""
        self.engine = engine
        self.audit = audit
        self.upstream = upstream
        self.jobs = JobRecords(upstream, JobDeletions(run_dir / "job-deletions.log"))
        self.services = Services(
            authenticator,
            audit,
            upstream,
            max_body_bytes,
            self.jobs,
            max_filtered_bytes,
            locks_dir=run_dir if shared_locks else None,
        )
        self.metrics = RequestMetrics()
        # Browser access (docs/browser.md): without it, console routes answer 404 and no Host is refused.
        self.console = Console(web, upstream) if web is not None else None
        self.handlers: dict[RouteKind, Handler] = {
            "ray_api": RayApi(self.services),
            "dashboard": Dashboard(self.services),
            "console_page": ConsolePages(self.services, self.console),
            "console_anonymous": ConsoleAnonymous(self.services, self.console),
            "control": Control(self.services, control),
            "serve": ServeControl(self.services),
        }
        self.log_tail = LogTail(self.services)
        chain: ASGIApp = self._route
        if web is not None:
            chain = HostMiddleware(OriginMiddleware(chain, web.config), web.config)
        self._chain = chain
        self._asgi = SecurityHeadersMiddleware(self._recorded)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] in ("http", "websocket"):
            await self._asgi(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.upstream.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.metrics.flush()
                await self.upstream.close()
                if self.console is not None:
                    await self.console.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- 2. the record boundary -----------------------------------------------------------------------------

    async def _recorded(self, scope: Scope, receive: Receive, send: Send) -> None:
        ex = Exchange.begin(scope, self.audit, self.engine)
        scope[EXCHANGE_KEY] = ex
        started: list[int] = []

        async def tracked(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.http.response.start"):
                started.append(int(message["status"]))
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", ex.request_id.encode())]}
            elif message["type"] == "websocket.accept":
                started.append(101)
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", ex.request_id.encode())]}
            await send(message)

        try:
            single_credentials(scope)
            await self._chain(scope, receive, tracked)
            if not ex.finished:  # a handler answered without its records: write what is missing now
                await ex.settle(started[0] if started else 500, "answered without its audit records")
        except Exception as exc:
            try:
                await self._failed(ex, exc, scope, receive, tracked, started[0] if started else None)
            except (AuditUnavailable, AuditRecordError) as audit_exc:
                # Principle 6: a request that cannot be recorded is not served.
                log.error("audit log unavailable: %s", audit_exc.message)
                if not started:
                    await _answer(ex, AUDIT_DOWN, scope, receive, tracked)
        finally:
            if ex.status is None and started:
                ex.status = started[0]
            self.metrics.observe(ex, time.monotonic() - ex.started, (self.jobs.hits, self.jobs.misses))

    async def _failed(
        self, ex: Exchange, exc: Exception, scope: Scope, receive: Receive, send: Send, status: int | None
    ) -> None:
        """Record ``exc`` as the request's refusal and answer it, unless an answer (``status``) already began."""
        if isinstance(exc, (AuditUnavailable, AuditRecordError)):
            raise exc
        if isinstance(exc, ClientGone):
            await ex.client_gone(exc.status, exc.reason, exc.outcome, exc.bytes_received)
            return
        refusal = refusals.addressed(_as_refusal(ex, exc), ex, scope)
        if status is not None:
            if not ex.decided:
                await ex.refuse(refusal)
            else:
                await ex.finish(status, reason=f"failed after the answer began: {refusal.reason}")
            return
        await ex.refuse(refusal)
        await _answer(ex, refusal, scope, receive, send)

    # -- 4. parse, match, dispatch on the route's kind ------------------------------------------------------

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        ex: Exchange = scope[EXCHANGE_KEY]
        websocket = scope["type"] == "websocket"
        method = "GET" if websocket else str(scope["method"])
        path = canonical_path(scope.get("raw_path") or str(scope["path"]).encode())
        ex.path = path
        found = match(method, path, websocket=websocket)
        if found is None:
            # An anonymous caller learns nothing about the route table, not even that a route is unknown.
            await authenticate(self.services, ex, scope, session=False)
            allowed = [] if websocket else _methods_for(path)
            if allowed and method not in allowed:
                wrong = Refusal(
                    405,
                    f"{method} is not answered on this path",
                    reason=f"method not in the route table: {method} {path}"[:600],
                    hint=f"use {', '.join(allowed)}",
                )
                wrong.headers["allow"] = ", ".join(allowed)
                raise wrong
            reason = f"route not in the route table: {method} {path}"[:600]
            raise Refusal(404, "no such route", reason=reason, hint=HINT_UNKNOWN_ROUTE)
        route = found.route
        ex.route, ex.action = route, route.action
        query = parse_pairs(scope.get("query_string", b""))
        check_pairs(query, route.query)
        routed = Routed(route, found.params, Target(path, query))
        ex.target = routed.target
        if websocket:
            await self.log_tail.handle(ex, routed, WebSocket(scope, receive, send))
            return
        response = await self.handlers[route.kind].handle(ex, routed, Request(scope, receive))
        await response(scope, receive, send)


def _as_refusal(ex: Exchange, exc: Exception) -> Refusal:
    if isinstance(exc, Refusal):
        return exc
    if isinstance(exc, UpstreamUnavailable):
        return responses.ray_unreachable(exc.message)
    if isinstance(exc, FilterError):
        return responses.unchecked_answer(exc.message)
    if isinstance(exc, AnswerTooLarge):
        return responses.unchecked_answer(exc.message)
    return refusals.internal_error(ex, exc, log)


async def _answer(ex: Exchange, refusal: Refusal, scope: Scope, receive: Receive, send: Send) -> None:
    response: Response = refusals.response(refusal, ex)
    if scope["type"] == "http" and refusal.status == 401 and _browser_navigation(scope):
        # A person opening a page without a session is shown the sign-in page, not a JSON error.
        response = RedirectResponse("/ui/signin", status_code=303, headers={"cache-control": "no-store"})
    await refusals.send(response, refusal, scope, receive, send)


def _browser_navigation(scope: Scope) -> bool:
    """A person's page load (not an XHR) of the dashboard or the console."""
    path = str(scope.get("path", ""))
    if scope.get("method") != "GET" or not (path.startswith(("/ui/", "/dashboard/")) or path == "/ui"):
        return False
    mode = header(scope, b"sec-fetch-mode")
    return mode == "navigate" if mode is not None else "text/html" in (header(scope, b"accept") or "")


def _methods_for(path: str) -> list[str]:
    """The methods the route table answers on ``path``, for a 405's Allow header (HEAD as ``match`` allows it)."""
    found = [route for route in ROUTES if not route.websocket and route.regex.match(path)]
    methods = {route.method for route in found}
    if any(route.method == "GET" and route.mount for route in found):
        methods.add("HEAD")
    return sorted(methods)

"""The gateway as an ASGI app: match, authenticate, decide, audit, forward (or answer), audit the outcome."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from raywarden.audit import AuditLog, AuditRecordError, AuditUnavailable
from raywarden.errors import AuthenticationError
from raywarden.gateway import responses
from raywarden.gateway.auth import Authenticator, Identity, MissingCredential
from raywarden.gateway.browser import BrowserGuard, hardened_send, session_cookie
from raywarden.gateway.control import ControlHandler, ControlRequest
from raywarden.gateway.dashboard import (
    DASHBOARD_FILTERS,
    NEEDS_JOBS,
    driver_log_job,
    fetch_job_access,
    filter_dashboard,
    scope_refusal,
)
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
from raywarden.gateway.packages import PackageUploads
from raywarden.gateway.paths import BadPath, canonical_path, encode_path
from raywarden.gateway.resources import Resource, context_for, principal_for, resource_for
from raywarden.gateway.responses import Refusal
from raywarden.gateway.routes import Match, match
from raywarden.gateway.upstream import Upstream, UpstreamResponse, UpstreamUnavailable
from raywarden.gateway.web import Console, WebServices
from raywarden.gateway.web.oidc_flow import BINDING_COOKIE
from raywarden.policy.engine import Decision, Entity, PolicyEngine, PolicyRequest
from raywarden.policy.entities import job_entity

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
        return {
            "kind": "outcome",
            "request_id": self.request_id,
            "status": status,
            "latency_ms": self.elapsed_ms(),
            **fields,
        }


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
        web: WebServices | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.engine = engine
        self.audit = audit
        self.upstream = upstream
        self.packages = PackageUploads(upstream)
        self.control = control
        self.max_body_bytes = max_body_bytes
        # Browser access (docs/browser.md): without it, console routes answer 404 and no Host is refused.
        self.guard = BrowserGuard(web.config) if web is not None else None
        self.console = Console(web, upstream) if web is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            response = await self._http(Request(scope, receive))
            await response(scope, receive, hardened_send(scope, send))
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
                if self.console is not None:
                    await self.console.close()
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

    def _authenticate(self, scope: Scope, ex: Exchange, *, session: bool = False) -> Identity:
        der = scope.get("state", {}).get(PEER_CERT_STATE_KEY)
        authorization = _header(scope, b"authorization")
        cookie = session_cookie(_header(scope, b"cookie")) if session else None
        hint = responses.HINT_NO_CREDENTIAL
        try:
            identity = self.authenticator.authenticate(der, authorization, cookie)
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
            raise Refusal(
                404,
                "no such route",
                reason=f"route not in the route table: {method} {path}",
                hint="the gateway serves Ray's Jobs API, the dashboard under /dashboard/ and its "
                "console under /ui/; see docs/browser.md",
            )
        ex.action = found.route.action
        query = scope.get("query_string", b"").decode("latin-1")
        if query:
            names = {part.partition("=")[0] for part in query.split("&") if part}
            unknown = names - found.route.query
            if unknown:
                raise Refusal(
                    400,
                    f"query parameter not allowed: {sorted(unknown)[0]}",
                    reason=f"unlisted query parameters {sorted(unknown)}",
                )
        return found, query

    async def _authorize(
        self,
        scope: Scope,
        ex: Exchange,
        identity: Identity,
        found: Match,
        submission: JobSubmitBody | None,
        query: str = "",
    ) -> tuple[Viewer, Resource]:
        """Decide; raise the refusal (403, or 404 for a job the caller may not view) when denied."""
        resource = await resource_for(found, identity, submission, self.upstream)
        entity = resource.entity
        ex.resource = f"{entity.type}::{entity.id}"
        engine = self.engine  # one set for the whole request, even if a reload swaps it meanwhile
        context = context_for(
            identity, ex.source, scope.get("state", {}).get(PEER_CERT_STATE_KEY), _header(scope, b"authorization")
        )
        if identity.issued_at is not None:
            # A session's credential age is the time since its sign-in.
            context["auth_age_s"] = max(0, int(time.time() - identity.issued_at))
        viewer = Viewer(engine, principal_for(identity), context)
        action = found.route.action
        decision = engine.decide(PolicyRequest(viewer.principal, action, entity, context))
        if not decision.allowed and action == "dashboard.logs":
            decision, entity = await self._driver_log_fallback(viewer, query, decision, entity)
            ex.resource = f"{entity.type}::{entity.id}"
        ex.policy_ids = decision.policy_ids
        ex.policy_input = {
            "groups": list(identity.groups),
            "resource_attrs": entity.attrs,
            "context": {k: v for k, v in context.items() if k != "source"},
        }
        if not decision.allowed:
            if action in JOB_ACTIONS:
                raise refusal_for_job(viewer, action, entity, decision)
            raise Refusal(
                403,
                "forbidden",
                reason=decision.reason,
                hint="ask an administrator for access; policies decide per action and resource",
            )
        return viewer, resource

    async def _record_allow(self, ex: Exchange) -> None:
        # Principle 5: the decision is on disk before anything is forwarded or answered.
        await self.audit.append_async(ex.record(decision="allow", status=None, policy_version=self.engine.version))

    async def _refuse(self, ex: Exchange, refusal: Refusal, scope: Scope | None = None) -> Response:
        await self.audit.append_async(
            ex.record(decision="deny", status=refusal.status, reason=refusal.reason, policy_version=self.engine.version)
        )
        if refusal.status == 401 and scope is not None and _browser_navigation(scope):
            # A person opening a page without a session is shown the sign-in page, not a JSON error.
            return RedirectResponse(
                "/ui/signin", status_code=303, headers={"cache-control": "no-store", "x-request-id": ex.request_id}
            )
        return responses.error(refusal.status, refusal.message, ex.request_id, refusal.hint)

    def _browser_checks(self, scope: Scope, method: str) -> None:
        """Host allowlist and cross-origin checks (gateway/browser.py), before anything else."""
        if self.guard is None:
            return
        self.guard.check_host(_header(scope, b"host"))
        has_session = session_cookie(_header(scope, b"cookie")) is not None
        self.guard.check_origin(
            method,
            _header(scope, b"origin"),
            _header(scope, b"sec-fetch-site"),
            _header(scope, b"sec-fetch-mode"),
            has_session,
        )

    # -- HTTP ------------------------------------------------------------------------------------

    async def _http(self, request: Request) -> Response:
        ex = self._exchange(request.scope, request.method)
        try:
            try:
                self._browser_checks(request.scope, request.method)
                found, query = self._match(request.scope, ex, request.method, websocket=False)
                if found.route.console and found.route.auth == "anonymous":
                    return await self._console_anonymous(request, ex, found, query)
                identity = (
                    self._authenticate(request.scope, ex, session=found.route.session)
                    if found.route.auth == "identity"
                    else None
                )
                body = await self._read_body(request, found)
                if found.route.console:
                    assert identity is not None  # noqa: S101 - an identity route
                    return await self._console_page(request, ex, found, query, identity)
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
                viewer, resource = await self._authorize(request.scope, ex, identity, found, submission, query)
            except Refusal as refusal:
                return await self._refuse(ex, refusal, request.scope)
            except UpstreamUnavailable as exc:
                return await self._refuse(ex, _ray_down(exc))
            await self._record_allow(ex)
            if not resource.known:
                # Answered like a job the caller may not view, so that neither reveals which it is.
                return await self._refuse_after_allow(ex, unknown_job(resource.entity.id))
            return await self._forward(request, ex, found, query, body, viewer, resource)
        except (AuditUnavailable, AuditRecordError) as exc:
            # Principle 6: a request that cannot be recorded is not served.
            log.error("audit log unavailable: %s", exc.message)
            return responses.error(
                503,
                "audit log unavailable; requests are refused until it is writable",
                ex.request_id,
                "check disk space and permissions of the audit dir",
            )

    async def _forward(
        self,
        request: Request,
        ex: Exchange,
        found: Match,
        query: str,
        body: bytes | None,
        viewer: Viewer,
        resource: Resource,
    ) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        action = ex.action
        route = found.route
        template = route.ray_template if route.mount else None
        dashboard_filter = template if template in DASHBOARD_FILTERS else None
        filtered = action in ("jobs.list", "jobs.read") or dashboard_filter is not None
        if filtered:
            headers.pop("accept-encoding", None)  # the gateway must read what it filters
        path = encode_path(route.upstream_path(canonical_path(request.scope["raw_path"])))
        try:
            # Per-job decisions first: a request scoped to a job the caller may not view never reaches Ray.
            access = await fetch_job_access(self.upstream, viewer) if template in NEEDS_JOBS else None
            scoped = scope_refusal(template, found.params, query, access) if template and access is not None else None
            if scoped is not None:
                return await self._refuse_after_allow(ex, scoped)
            if action == "packages.upload":
                async with self.packages.exclusive(path):
                    exists = await self.packages.overwrite_refusal(path)
                    if exists is not None:
                        return await self._refuse_after_allow(ex, exists)
                    upstream = await self.upstream.request(request.method, path, query, headers, body)
            else:
                upstream = await self.upstream.request(request.method, path, query, headers, body)
        except (UpstreamUnavailable, FilterError) as exc:
            down = _ray_down(exc) if isinstance(exc, UpstreamUnavailable) else None
            reason = down.reason if down else str(exc)
            await self.audit.append_async(ex.outcome(503 if down else 502, reason=reason))
            if down is None:
                return responses.error(502, "Ray's answer could not be checked", ex.request_id)
            return responses.error(down.status, down.message, ex.request_id, down.hint)
        shown: dict[str, int] = {}
        if filtered and upstream.status == 200:
            try:
                if dict(upstream.headers).get("content-encoding"):
                    raise FilterError("Ray sent an encoded response the gateway cannot filter")
                if dashboard_filter is not None:
                    data, shown = filter_dashboard(dashboard_filter, viewer, upstream.body, access, query, found.params)
                elif action == "jobs.list":
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

    async def _refuse_after_allow(self, ex: Exchange, refusal: Refusal) -> Response:
        """A refusal found after the policy allowed the request: its outcome record says why."""
        await self.audit.append_async(ex.outcome(refusal.status, reason=refusal.reason))
        return responses.error(refusal.status, refusal.message, ex.request_id, refusal.hint)

    async def _driver_log_fallback(
        self, viewer: Viewer, query: str, denied: Decision, entity: Entity
    ) -> tuple[Decision, Entity]:
        """A job's driver log, asked for by the dashboard's job page: decided as "jobs.logs" on that job."""
        sid = driver_log_job(query)
        if sid is None:
            return denied, entity
        info = await self.upstream.job_info(sid)
        if info is None:
            return denied, entity
        job = job_entity(sid, info)
        decision = viewer.decide("jobs.logs", job)
        return (decision, job) if decision.allowed else (denied, entity)

    async def _console_anonymous(self, request: Request, ex: Exchange, found: Match, query: str) -> Response:
        """Sign-in, sign-out and the console's static answers: audited as one record, like anonymous control
        routes. The handler checks the sign-in code or the session cookie itself."""
        if self.console is None:
            raise Refusal(404, "no such route", reason="browser access is not configured on this gateway")
        body = await self._read_body(request, found)
        cookie = session_cookie(request.headers.get("cookie"))
        result = await self.console.anonymous(
            found.route.action,
            request.method,
            found.route.template,
            query,
            body,
            cookie,
            ex.source,
            host=request.headers.get("host", ""),
            binding=session_cookie(request.headers.get("cookie"), BINDING_COOKIE),
        )
        if result.audit.get("session_principal"):
            ex.resource = f"Principal::{result.audit['session_principal']}"
        await self.audit.append_async(
            ex.record(
                decision="deny" if result.deny else "allow",
                status=result.status,
                policy_version=self.engine.version,
                **result.audit,
            )
        )
        result.response.headers["x-request-id"] = ex.request_id
        return result.response

    async def _console_page(
        self, request: Request, ex: Exchange, found: Match, query: str, identity: Identity
    ) -> Response:
        if self.console is None:
            raise Refusal(404, "no such route", reason="browser access is not configured on this gateway")
        viewer, _ = await self._authorize(request.scope, ex, identity, found, None)
        await self._record_allow(ex)
        cookie = session_cookie(request.headers.get("cookie"))
        try:
            result = await self.console.page(
                found.route.action, found.route.template, query, identity, cookie, viewer, found.params
            )
        except Refusal as refusal:
            return await self._refuse_after_allow(ex, refusal)
        except (UpstreamUnavailable, FilterError) as exc:
            await self.audit.append_async(ex.outcome(503, reason=str(exc)))
            return responses.error(503, "Ray is not reachable behind the gateway", ex.request_id)
        await self.audit.append_async(ex.outcome(result.status, **result.audit))
        result.response.headers["x-request-id"] = ex.request_id
        return result.response

    async def _control(
        self, scope: Scope, ex: Exchange, found: Match, identity: Identity | None, body: bytes | None
    ) -> Response:
        if identity is not None:
            await self._authorize(scope, ex, identity, found, None)
            await self._record_allow(ex)
        handler = self.control[found.route.action]
        result = await handler(ControlRequest(ex.request_id, ex.source, found.params, body, identity))
        record = ex.record(
            decision="allow" if result.status < 400 else "deny",
            status=result.status,
            policy_version=self.engine.version,
            **result.audit,
        )
        if identity is None:
            await self.audit.append_async(record)
        else:
            await self.audit.append_async(ex.outcome(result.status, **result.audit))
        headers = {
            responses.GATEWAY_HEADER[0]: responses.GATEWAY_HEADER[1],
            "x-request-id": ex.request_id,
            "cache-control": "no-store",
        }
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
                self._browser_checks(ws.scope, "GET")
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
                await self.audit.append_async(
                    ex.record(
                        decision="deny" if refusal.status != 503 else "error",
                        status=refusal.status,
                        reason=refusal.reason,
                        policy_version=self.engine.version,
                    )
                )
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
_CREDENTIAL_FIELD = {"certificate": "cert_serial", "token": "jti", "oidc": "oidc_jti", "session": "session_ref"}


def _credential_field(identity: Identity | None) -> dict[str, str]:
    if identity is None:
        return {}
    return {_CREDENTIAL_FIELD.get(identity.auth_method, "credential_ref"): identity.credential_id}


def _browser_navigation(scope: Scope) -> bool:
    """A person's page load (not an XHR) of the dashboard or the console."""
    path = str(scope.get("path", ""))
    if scope.get("method") != "GET" or not (path.startswith(("/ui/", "/dashboard/")) or path == "/ui"):
        return False
    mode = _header(scope, b"sec-fetch-mode")
    return mode == "navigate" if mode is not None else "text/html" in (_header(scope, b"accept") or "")


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
    return Refusal(
        503,
        "Ray is not reachable behind the gateway",
        reason=f"upstream unavailable: {exc}",
        hint="check `raywarden status`; start the cluster with `raywarden up`",
    )

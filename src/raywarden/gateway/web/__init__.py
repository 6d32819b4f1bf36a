"""raywarden's console: sign-in with a one-time link (or OIDC), sign-out, who am I, my jobs, and for admins
the principals and the audit log. Plain server-rendered HTML (gateway/web/pages.py); the app authenticates,
authorizes and audits every request before a page handler here runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from raywarden.audit.reader import RecordFilter, last_records, parse_time
from raywarden.errors import ConfigError
from raywarden.gateway.auth import Identity
from raywarden.gateway.browser import clear_session_cookie, set_session_cookie
from raywarden.gateway.dashboard import fetch_job_access
from raywarden.gateway.filters import FilterError, Viewer, filter_job_list
from raywarden.gateway.metrics.prometheus import Prometheus
from raywarden.gateway.metrics.views import MetricsViews, View, grafana_health
from raywarden.gateway.oidc import OidcFederation, OidcIssuer, load_oidc_config, oidc_config_path
from raywarden.gateway.responses import Refusal
from raywarden.gateway.upstream import Upstream
from raywarden.gateway.web import oidc_flow, pages
from raywarden.gateway.web.assets import CONSOLE_CSS
from raywarden.identity.sessions import NewSession, SessionRefused, SessionStore, csrf_matches, csrf_token
from raywarden.identity.store import IdentityStore
from raywarden.policy.engine import CLUSTER_ID, Entity
from raywarden.policy.jobattrs import job_attrs
from raywarden.state import ClusterConfig, StateDir

SIGNIN_WINDOW_S = 300.0
MAX_SIGNIN_FAILURES = 10  # failed sign-ins from one source address per window
MAX_AUDIT_ROWS = 500
NO_STORE = {"cache-control": "no-store"}


@dataclass(frozen=True)
class WebServices:
    """What the console uses: the cluster config and state dir, the identity and session stores."""

    state: StateDir
    config: ClusterConfig
    store: IdentityStore
    sessions: SessionStore
    oidc: OidcFederation | None = None
    # Ray's Metrics page, when the cluster runs a Prometheus (`raywarden up` starts one if it is installed).
    metrics: MetricsViews | None = None

    @classmethod
    def for_gateway(
        cls, state: StateDir, config: ClusterConfig, store: IdentityStore, prometheus_url: str | None = None
    ) -> WebServices:
        metrics = MetricsViews(Prometheus(prometheus_url), lambda: ray_session_name(state)) if prometheus_url else None
        return cls(
            state,
            config,
            store,
            SessionStore(state.identity_db, store),
            OidcFederation(oidc_config_path(state)),
            metrics,
        )


def ray_session_name(state: StateDir) -> str:
    """The running Ray session's name (Ray labels every metric with it), from Ray's session_latest link."""
    try:
        return os.path.basename(os.readlink(state.ray_temp_dir / "session_latest"))
    except OSError:
        return ""


@dataclass
class PageResult:
    response: Response
    status: int
    # Extra fields for the request's audit record (session refs, reasons; never secrets).
    audit: dict[str, Any] = field(default_factory=dict)
    deny: bool = False


def _html(body: str, status: int = 200, **headers: str) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers={**NO_STORE, **headers})


def _form(body: bytes | None) -> dict[str, str]:
    try:
        parsed = parse_qs((body or b"").decode("ascii"), max_num_fields=8, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in parsed.items() if v}


def _params(query: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(query, max_num_fields=16).items() if v}


class Console:
    def __init__(self, services: WebServices, upstream: Upstream) -> None:
        self.web = services
        self.upstream = upstream

    @property
    def sessions(self) -> SessionStore:
        return self.web.sessions

    # -- anonymous routes ------------------------------------------------------------------------

    async def anonymous(
        self,
        action: str,
        method: str,
        path: str,
        query: str,
        body: bytes | None,
        cookie: str | None,
        source: str,
        *,
        host: str = "",
        binding: str | None = None,
    ) -> PageResult:
        if action == "console.home":
            target = "/dashboard/" if path == "/dashboard" else "/ui/"
            return PageResult(RedirectResponse(target, status_code=308), 308)
        if action == "console.auth_mode":
            # Ray's UI pops its own token dialog on any 401/403 unless told authentication is off; the
            # gateway owns authentication, so Ray's prompt is never shown (research notes section 3).
            return PageResult(JSONResponse({"authentication_mode": "disabled"}, headers=NO_STORE), 200)
        if action == "console.asset" and path == "/favicon.ico":
            return PageResult(Response(status_code=204, headers={"cache-control": "max-age=86400"}), 204)
        if action == "console.asset":
            return PageResult(
                Response(CONSOLE_CSS, media_type="text/css", headers={"cache-control": "max-age=3600"}), 200
            )
        if action == "console.signin":
            if method == "GET":
                return PageResult(_html(pages.signin_page(_params(query).get("code"), self._issuers())), 200)
            return self._signin(body, cookie, source)
        if action == "console.signout":
            return self._signout(body, cookie)
        if action == "console.oidc" and path == "/ui/oidc/start":
            return await self._oidc_start(_params(query).get("issuer", ""), host)
        if action == "console.oidc":
            return await self._oidc_callback(_params(query), binding, cookie, source)
        raise KeyError(action)

    def _configured_issuers(self) -> list[OidcIssuer]:
        path = oidc_config_path(self.web.state)
        if self.web.oidc is None or not path.is_file():
            return []
        try:
            return list(load_oidc_config(path).issuers)
        except ConfigError:
            return []

    def _issuers(self) -> list[tuple[int, str]]:
        return [(index, issuer.issuer) for index, issuer in enumerate(self._configured_issuers())]

    def _oidc_refused(self, status: int, reason: str, text: str) -> PageResult:
        body = pages.signin_page(None, self._issuers(), text)
        response = _html(body, status)
        response.headers.append("set-cookie", oidc_flow.clear_binding_cookie())
        return PageResult(response, status, {"event": "session.refused", "reason": reason}, deny=True)

    async def _oidc_start(self, index: str, host: str) -> PageResult:
        issuers = self._configured_issuers()
        if not index.isdigit() or int(index) >= len(issuers):
            return self._oidc_refused(404, f"no OIDC issuer number {index[:10]!r}", "No such sign-on provider.")
        issuer = issuers[int(index)]
        try:
            endpoints = await asyncio.to_thread(oidc_flow.discover, issuer)
        except oidc_flow.OidcFlowError as exc:
            return self._oidc_refused(502, exc.reason, "The sign-on provider cannot be reached.")
        # The Host header passed the allowlist (gateway/browser.py), so the redirect URI is one of ours.
        flow = self.sessions.begin_oidc(issuer.issuer, f"https://{host}/ui/oidc/callback")
        response = RedirectResponse(
            oidc_flow.authorization_url(issuer, endpoints, flow), status_code=303, headers=NO_STORE
        )
        response.headers.append("set-cookie", oidc_flow.binding_cookie(flow.binding))
        return PageResult(response, 303, {"event": "oidc.start", "oidc_issuer": issuer.issuer})

    async def _oidc_callback(
        self, params: dict[str, str], binding: str | None, cookie: str | None, source: str
    ) -> PageResult:
        failed = "Single sign-on did not complete. Try again."
        if params.get("error"):
            return self._oidc_refused(401, f"issuer returned error {params['error'][:60]!r}", failed)
        try:
            flow = self.sessions.finish_oidc(params.get("state", ""), binding)
        except SessionRefused as exc:
            return self._oidc_refused(401, exc.reason, failed)
        issuer = next((i for i in self._configured_issuers() if i.issuer == flow.issuer), None)
        if issuer is None or not params.get("code") or self.web.oidc is None:
            return self._oidc_refused(401, "OIDC callback without a code or for an unconfigured issuer", failed)
        try:
            found = await oidc_flow.redeem(self.web.oidc, issuer, flow, params["code"])
        except oidc_flow.OidcFlowError as exc:
            return self._oidc_refused(401, exc.reason, failed)
        spiffe = f"spiffe://{self.web.config.trust_domain}/user/{found.name}"
        principal = self.web.store.get(spiffe)
        if principal is None and not found.allow_unregistered:
            return self._oidc_refused(
                403, f"{spiffe} is not registered and {issuer.issuer} admits registered users only", failed
            )
        if principal is not None and principal.disabled:
            return self._oidc_refused(403, f"principal {spiffe} is disabled", failed)
        config, now = self.web.config, time.time()
        new = self.sessions.create(
            spiffe,
            "oidc",
            found.credential_id,
            source=source,
            idle_s=config.session_idle_minutes * 60,
            max_s=config.session_max_hours * 3600,
            extra_groups=found.groups,
            now=now,
        )
        result = self._session_started(
            new,
            cookie,
            now,
            {"session_principal": spiffe, "via": "oidc", "oidc_issuer": issuer.issuer, "oidc_ref": found.credential_id},
        )
        result.response.headers.append("set-cookie", oidc_flow.clear_binding_cookie())
        return result

    def _signin(self, body: bytes | None, cookie: str | None, source: str) -> PageResult:
        now = time.time()
        scope = f"signin-source:{source}"
        if self.web.store.failures_since(scope, now - SIGNIN_WINDOW_S) >= MAX_SIGNIN_FAILURES:
            return self._signin_refused(429, f"too many failed sign-ins from {source}", source, now, count=False)
        code = _form(body).get("code")
        if not code:
            return self._signin_refused(400, "sign-in form without a code", source, now)
        try:
            code_id, spiffe_id, via_method, via_id = self.sessions.redeem_link(code, now)
        except SessionRefused as exc:
            return self._signin_refused(401, exc.reason, source, now)
        config = self.web.config
        try:
            new = self.sessions.create(
                spiffe_id,
                via_method,
                via_id,
                source=source,
                idle_s=config.session_idle_minutes * 60,
                max_s=config.session_max_hours * 3600,
                now=now,
            )
        except SessionRefused as exc:
            return self._signin_refused(403, f"sign-in code {code_id}: {exc.reason}", source, now, code_id=code_id)
        return self._session_started(
            new, cookie, now, {"code_id": code_id, "session_principal": spiffe_id, "via": via_method}
        )

    def _session_started(self, new: NewSession, cookie: str | None, now: float, fields: dict[str, Any]) -> PageResult:
        """Every sign-in ends here: the browser's previous session ends (session ids are rotated at sign-in),
        the new cookie is set, and the browser goes to the console."""
        fields = {"event": "session.start", "session_ref": new.info.ref, **fields}
        if cookie:
            ended = self.sessions.end(cookie, "replaced at sign-in", now)
            if ended:
                fields["replaced_session_ref"] = ended
        response = RedirectResponse("/ui/", status_code=303, headers=NO_STORE)
        response.headers.append(
            "set-cookie", set_session_cookie(new.session_id.reveal(), int(new.info.expires_at - now))
        )
        return PageResult(response, 303, fields)

    def _signin_refused(
        self, status: int, reason: str, source: str, now: float, *, count: bool = True, **fields: Any
    ) -> PageResult:
        if count:
            self.web.store.record_failure(f"signin-source:{source}", now)
        text = (
            "Too many failed sign-ins from this address; wait a few minutes."
            if status == 429
            else "This sign-in link is invalid, expired or already used. Run `raywarden ui` for a new one."
        )
        body = pages.signin_page(None, self._issuers(), text)
        return PageResult(
            _html(body, status), status, {"event": "session.refused", "reason": reason, **fields}, deny=True
        )

    def _signout(self, body: bytes | None, cookie: str | None) -> PageResult:
        response = RedirectResponse("/ui/signin", status_code=303, headers=NO_STORE)
        response.headers.append("set-cookie", clear_session_cookie())
        if not cookie:
            return PageResult(response, 303, {"event": "session.end", "reason": "no session cookie"})
        if not csrf_matches(cookie, _form(body).get("csrf", "")):
            page = pages.message_page(
                "Sign-out refused", "The sign-out form was not this session's own.", link=("/ui/", "Back")
            )
            return PageResult(
                _html(page, 403), 403, {"reason": "sign-out without this session's CSRF token"}, deny=True
            )
        ended = self.sessions.end(cookie, "signed out")
        return PageResult(response, 303, {"event": "session.end", "session_ref": ended})

    # -- pages for a signed-in (or certificate-holding) principal -----------------------------------

    async def close(self) -> None:
        if self.web.metrics is not None:
            await self.web.metrics.prometheus.close()

    async def page(
        self,
        action: str,
        path: str,
        query: str,
        identity: Identity,
        cookie: str | None,
        viewer: Viewer,
        params: dict[str, str] | None = None,
    ) -> PageResult:
        if path == "/dashboard/api/grafana_health" or path.startswith("/ui/metrics/"):
            return await self._metrics(path, query, viewer, params or {})
        admin = viewer.decide("console.admin", Entity("Cluster", CLUSTER_ID)).allowed
        csrf = csrf_token(cookie) if cookie and identity.auth_method == "session" else None
        nav = pages.navigation(identity.name, csrf, admin=admin)
        if path == "/ui/":
            return PageResult(_html(pages.page("Who am I", self._whoami(identity), nav=nav)), 200)
        if path == "/ui/jobs":
            body, shown = await self._my_jobs(identity, viewer)
            return PageResult(_html(pages.page("My jobs", body, nav=nav)), 200, shown)
        if path == "/ui/admin/principals":
            return PageResult(_html(pages.page("Users and service accounts", self._principals(), nav=nav)), 200)
        if path == "/ui/admin/audit":
            body, status = self._audit(_params(query))
            return PageResult(_html(pages.page("Audit log", body, nav=nav), status), status)
        raise KeyError(path)

    async def _metrics(self, path: str, query: str, viewer: Viewer, params: dict[str, str]) -> PageResult:
        """Ray's Metrics page: the Grafana health check, one panel, or a whole dashboard (gateway/metrics)."""
        metrics = self.web.metrics
        every_job = await self._sees_every_job(viewer) if metrics is not None else False
        if path == "/dashboard/api/grafana_health":
            session = metrics.session_name() if metrics is not None else ""
            body = grafana_health(metrics is not None, every_job, session)
            return PageResult(JSONResponse(body, headers=NO_STORE), 200, {"metrics": body["msg"]})
        if metrics is None:
            raise Refusal(
                404,
                "metrics are not available on this cluster",
                reason="no Prometheus configured for this gateway",
                hint="install Prometheus (apt-get install prometheus) and restart: `raywarden down; raywarden up`",
            )
        if not every_job:
            raise Refusal(
                403,
                "metrics cover every job, and you may not view all of them",
                reason="metrics panels need the caller to view every job",
                hint="ask an administrator; your own jobs' tasks are on their pages in the dashboard",
            )
        # Grafana's "refresh" comes without a value: keep blank parameters.
        request = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True, max_num_fields=40).items()}
        uid = params.get("dashboard_uid", "")
        view: View = await (metrics.panel(uid, request) if "/d-solo/" in path else metrics.dashboard(uid, request))
        page = pages.embedded(view.title, view.body, view.refresh_s, whole="/d-solo/" not in path)
        return PageResult(_html(page), 200, view.audit)

    async def _sees_every_job(self, viewer: Viewer) -> bool:
        """Metrics name tasks and actors of every job: the same test as for a summary of every job."""
        try:
            return (await fetch_job_access(self.upstream, viewer)).sees_every_job
        except FilterError:
            return False

    def _whoami(self, identity: Identity) -> str:
        e = pages.e
        items = [
            ("Identity", f"<code>{e(identity.spiffe_id)}</code>"),
            ("Name", e(identity.name)),
            ("Kind", "user" if identity.kind == "user" else "service account"),
            ("Groups", e(", ".join(identity.groups) or "none")),
            ("Signed in with", e(identity.auth_method)),
        ]
        if identity.auth_method == "session":
            info = self._session_info(identity)
            if info is not None:
                items.append(("Session started", e(pages.when(info["created_at"]))))
                items.append(("Session ends at the latest", e(pages.when(info["expires_at"]))))
                items.append(("Idle timeout", e(f"{self.web.config.session_idle_minutes:g} minutes")))
                items.append(("Session created by", e(f"{info['via_method']} {info['via_id']}")))
        certs = [c for c in self.web.store.certificates_of(identity.spiffe_id) if not c["revoked_at"]]
        if certs:
            latest = max(certs, key=lambda c: str(c["not_after"]))
            items.append(("Certificate expires", e(f"{latest['not_after']} (serial {latest['serial']})")))
        return pages.definition_list(items)

    def _session_info(self, identity: Identity) -> dict[str, Any] | None:
        return self.sessions.details(identity.credential_id, identity.spiffe_id)

    async def _my_jobs(self, identity: Identity, viewer: Viewer) -> tuple[str, dict[str, Any]]:
        resp = await self.upstream.request("GET", "/api/jobs/", "", {"accept": "application/json"}, None)
        if resp.status != 200:
            return '<p class="error" role="alert">Ray did not answer the job list.</p>', {"upstream": resp.status}
        data, shown = filter_job_list(viewer, resp.body)
        mine = [
            j
            for j in json.loads(data)
            if job_attrs(str(j.get("submission_id") or ""), j).get("owner") == identity.spiffe_id
        ]
        mine.sort(key=lambda j: j.get("start_time") or 0, reverse=True)
        e = pages.e
        rows = []
        for job in mine:
            sid = str(job.get("submission_id") or job.get("job_id") or "")
            link = f'<a href="/dashboard/#/jobs/{e(sid)}">{e(sid)}</a>'
            started = job.get("start_time")
            rows.append(
                [
                    link,
                    e(job.get("status")),
                    f"<code>{e(job.get('entrypoint'))}</code>",
                    e(pages.when(started / 1000 if isinstance(started, int | float) else None)),
                ]
            )
        body = pages.table(
            "Jobs you submitted",
            ["Submission", "Status", "Entrypoint", "Started"],
            rows,
            empty="You have no jobs on this cluster.",
        )
        return body, {**shown, "mine": len(mine)}

    def _principals(self) -> str:
        e = pages.e
        rows = []
        for p in self.web.store.list_principals():
            rows.append(
                [
                    e(p.name),
                    "user" if p.kind == "user" else "service account",
                    e(", ".join(p.groups)),
                    '<span class="error">disabled</span>' if p.disabled else '<span class="ok">active</span>',
                    e(self.sessions.live_count(p.spiffe_id)),
                ]
            )
        return pages.table(
            "Principals", ["Name", "Kind", "Groups", "Status", "Open sessions"], rows, empty="No principals."
        )

    def _audit(self, params: dict[str, str]) -> tuple[str, int]:
        e = pages.e
        error = None
        try:
            limit = max(1, min(int(params.get("limit") or 100), MAX_AUDIT_ROWS))
        except ValueError:
            limit, error = 100, "limit must be a number"
        since = until = None
        try:
            since = parse_time(params["since"]) if params.get("since") else None
            until = parse_time(params["until"]) if params.get("until") else None
        except ConfigError as exc:
            error = exc.message
        decision = params.get("decision") or None
        if decision not in (None, "allow", "deny", "error"):
            decision, error = None, "decision must be allow, deny or error"
        flt = RecordFilter(
            principal=params.get("principal") or None,
            action=params.get("action") or None,
            decision=decision,
            since=since,
            until=until,
        )
        entries = [] if error else last_records(self.web.state.audit_dir, flt, limit)
        fields = [
            ("principal", "Principal (SPIFFE ID)", "text"),
            ("action", "Action (glob, e.g. jobs.*)", "text"),
            ("since", "Since (e.g. 1h or RFC 3339)", "text"),
            ("until", "Until", "text"),
            ("limit", "Rows", "number"),
        ]
        inputs = "".join(
            f'<label for="f-{n}">{e(label)}<input id="f-{n}" name="{n}" type="{t}" '
            f'value="{e(params.get(n, ""))}"></label>'
            for n, label, t in fields
        )
        options = "".join(
            f'<option value="{v}"{" selected" if v == (decision or "") else ""}>{e(v or "any")}</option>'
            for v in ("", "allow", "deny", "error")
        )
        form = (
            f'<form class="filters" method="get" action="/ui/admin/audit" role="search">{inputs}'
            f'<label for="f-decision">Decision<select id="f-decision" name="decision">{options}</select></label>'
            '<button type="submit">Filter</button></form>'
        )
        if error:
            return form + f'<p class="error" role="alert">{e(error)}</p>', 400
        rows = []
        for _, record in reversed(entries):
            rows.append(
                [
                    e(record.get("time")),
                    e(record.get("kind")),
                    e(record.get("principal") or record.get("actor")),
                    e(record.get("auth_method")),
                    e(record.get("action") or record.get("event")),
                    e(record.get("decision")),
                    e(record.get("status")),
                    f"<code>{e(record.get('method'))} {e(record.get('path'))}</code>" if record.get("path") else "",
                    e(record.get("reason")),
                ]
            )
        return form + pages.table(
            f"Newest {len(rows)} matching records",
            ["Time", "Kind", "Principal", "Auth", "Action or event", "Decision", "Status", "Request", "Reason"],
            rows,
            empty="No matching records.",
        ), 200

"""The console's pages for an identity (already authenticated, authorized and recorded by the app): who am I,
my jobs, and for admins the principals and the audit log; and Ray's Metrics page (gateway/metrics)."""

from __future__ import annotations

import json
from typing import Any

from markupsafe import Markup
from starlette.responses import JSONResponse

from raywarden.audit.reader import RecordFilter, last_records, parse_time
from raywarden.errors import ConfigError
from raywarden.gateway.authn import Identity
from raywarden.gateway.authz import CLUSTER, Viewer
from raywarden.gateway.jobaccess import FilterError, fetch_job_access, filter_job_list
from raywarden.gateway.metrics.views import View, grafana_health
from raywarden.gateway.responses import Refusal
from raywarden.gateway.upstream import Upstream
from raywarden.gateway.web import pages
from raywarden.gateway.web.services import NO_STORE, PageHandler, PageRequest, PageResult, WebServices, html
from raywarden.identity.sessions import csrf_token
from raywarden.policy.jobattrs import job_attrs

MAX_AUDIT_ROWS = 500
_AUDIT_FIELDS = (
    ("principal", "Principal (SPIFFE ID)", "text"),
    ("action", "Action (glob, e.g. jobs.*)", "text"),
    ("since", "Since (e.g. 1h or RFC 3339)", "text"),
    ("until", "Until", "text"),
    ("limit", "Rows", "number"),
)


class Views:
    def __init__(self, services: WebServices, upstream: Upstream) -> None:
        self.web = services
        self.upstream = upstream

    def handlers(self) -> dict[str, PageHandler]:
        return {
            "whoami": self.whoami,
            "my_jobs": self.my_jobs,
            "principals": self.principals,
            "audit": self.audit,
            "grafana_health": self.grafana_health,
            "metrics_panel": self.metrics,
            "metrics_dashboard": self.metrics,
        }

    def _who(self, request: PageRequest) -> tuple[Identity, Viewer, pages.Navigation]:
        identity, viewer = request.identity, request.viewer
        if identity is None or viewer is None:
            raise Refusal(401, "authentication required", reason="console page without an identity")
        admin = viewer.decide("console.admin", CLUSTER).allowed
        csrf = csrf_token(request.cookie) if request.cookie and identity.auth_method == "session" else None
        return identity, viewer, pages.navigation(identity.name, csrf, admin=admin)

    async def whoami(self, request: PageRequest) -> PageResult:
        identity, _, nav = self._who(request)
        session = None
        if identity.auth_method == "session":
            session = self.web.sessions.details(identity.credential_id, identity.spiffe_id)
        certs = [c for c in self.web.store.certificates_of(identity.spiffe_id) if not c["revoked_at"]]
        certificate = max(certs, key=lambda c: str(c["not_after"])) if certs else None
        page = pages.render(
            "whoami.html",
            "Who am I",
            nav,
            identity=identity,
            session=session,
            idle_minutes=self.web.config.session_idle_minutes,
            certificate=certificate,
        )
        return PageResult(html(page), 200)

    async def my_jobs(self, request: PageRequest) -> PageResult:
        identity, viewer, nav = self._who(request)
        resp = await self.upstream.request("GET", "/api/jobs/", "", {"accept": "application/json"}, None)
        if resp.status != 200:
            page = pages.render("jobs.html", "My jobs", nav, unavailable=True, jobs=[])
            return PageResult(html(page), 200, {"upstream": resp.status})
        data, shown = filter_job_list(viewer, resp.body)
        mine = [
            j
            for j in json.loads(data)
            if job_attrs(str(j.get("submission_id") or ""), j).get("owner") == identity.spiffe_id
        ]
        mine.sort(key=lambda j: j.get("start_time") or 0, reverse=True)
        jobs = [
            {
                "id": str(j.get("submission_id") or j.get("job_id") or ""),
                "status": j.get("status") or "",
                "entrypoint": j.get("entrypoint") or "",
                "started": j["start_time"] / 1000 if isinstance(j.get("start_time"), int | float) else None,
            }
            for j in mine
        ]
        page = pages.render("jobs.html", "My jobs", nav, unavailable=False, jobs=jobs)
        return PageResult(html(page), 200, {**shown, "mine": len(mine)})

    async def principals(self, request: PageRequest) -> PageResult:
        _, _, nav = self._who(request)
        rows = [
            {
                "name": p.name,
                "kind": p.kind,
                "groups": p.groups,
                "disabled": p.disabled,
                "sessions": self.web.sessions.live_count(p.spiffe_id),
            }
            for p in self.web.store.list_principals()
        ]
        return PageResult(
            html(pages.render("principals.html", "Users and service accounts", nav, principals=rows)), 200
        )

    async def audit(self, request: PageRequest) -> PageResult:
        _, _, nav = self._who(request)
        values = {name: value for name, value in request.target.query}
        error = None
        try:
            limit = max(1, min(int(values.get("limit") or 100), MAX_AUDIT_ROWS))
        except ValueError:
            limit, error = 100, "limit must be a number"
        since = until = None
        try:
            since = parse_time(values["since"]) if values.get("since") else None
            until = parse_time(values["until"]) if values.get("until") else None
        except ConfigError as exc:
            error = exc.message
        decision = values.get("decision") or None
        if decision not in (None, "allow", "deny", "error"):
            decision, error = None, "decision must be allow, deny or error"
        flt = RecordFilter(
            principal=values.get("principal") or None,
            action=values.get("action") or None,
            decision=decision,
            since=since,
            until=until,
        )
        entries = [] if error else last_records(self.web.state.audit_dir, flt, limit)
        rows = [_audit_row(record) for _, record in reversed(entries)]
        page = pages.render(
            "audit.html",
            "Audit log",
            nav,
            fields=_AUDIT_FIELDS,
            values=values,
            decision=decision or "",
            error=error,
            rows=rows,
        )
        status = 400 if error else 200
        return PageResult(html(page, status), status)

    # -- Ray's Metrics page -----------------------------------------------------------------------------------

    async def _sees_every_job(self, viewer: Viewer) -> bool:
        """Metrics name tasks and actors of every job: the same test as for a summary of every job."""
        try:
            return (await fetch_job_access(self.upstream, viewer)).sees_every_job
        except FilterError:
            return False

    async def grafana_health(self, request: PageRequest) -> PageResult:
        _, viewer, _ = self._who(request)
        metrics = self.web.metrics
        every_job = await self._sees_every_job(viewer) if metrics is not None else False
        body = grafana_health(metrics is not None, every_job, metrics.session_name() if metrics is not None else "")
        return PageResult(JSONResponse(body, headers=NO_STORE), 200, {"metrics": body["msg"]})

    async def metrics(self, request: PageRequest) -> PageResult:
        """One panel (the dashboard's iframes) or a whole dashboard ("View in Grafana")."""
        _, viewer, _ = self._who(request)
        metrics = self.web.metrics
        if metrics is None:
            raise Refusal(
                404,
                "metrics are not available on this cluster",
                reason="no Prometheus configured for this gateway",
                hint="install Prometheus (apt-get install prometheus) and restart: `raywarden down; raywarden up`",
            )
        if not await self._sees_every_job(viewer):
            raise Refusal(
                403,
                "metrics cover every job, and you may not view all of them",
                reason="metrics panels need the caller to view every job",
                hint="ask an administrator; your own jobs' tasks are on their pages in the dashboard",
            )
        # Grafana's "refresh" comes without a value: blank values count.
        params = dict(request.target.query)
        uid = request.params.get("dashboard_uid", "")
        whole = request.page == "metrics_dashboard"
        view: View = await (metrics.dashboard(uid, params) if whole else metrics.panel(uid, params))
        # The chart's HTML is the gateway's own (gateway/metrics/chart.py escapes every label it draws).
        body = Markup(view.body)  # noqa: S704
        return PageResult(html(pages.embedded(view.title, body, view.refresh_s, whole=whole)), 200, view.audit)


def _audit_row(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "time": record.get("time"),
        "kind": record.get("kind"),
        "principal": record.get("principal") or record.get("actor"),
        "auth": record.get("auth_method"),
        "action": record.get("action") or record.get("event"),
        "decision": record.get("decision"),
        "status": record.get("status"),
        "request": f"{record.get('method')} {record.get('path')}" if record.get("path") else "",
        "reason": record.get("reason"),
    }

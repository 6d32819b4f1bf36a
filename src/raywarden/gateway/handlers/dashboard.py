"""Ray's dashboard under /dashboard (``kind="dashboard"``): decide, record, check the request's job scope
before Ray is asked, forward the canonical request, keep the answer to the caller's jobs, record.

The caller's decision for every job Ray lists (gateway/jobaccess.py) is computed once per request, and only
for routes whose scope or filter needs it (``Route.needs_job_access``).
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response

from raywarden.gateway import dashboard_assets
from raywarden.gateway.authz import (
    Viewer,
    decide,
    note,
    reads_job_status,
    refusal_for,
    resource_for,
    unknown_job,
    viewer_for,
)
from raywarden.gateway.exchange import Exchange
from raywarden.gateway.handlers import Services, answer_filter, authenticate, body_of, forward, forwarded_headers
from raywarden.gateway.jobaccess import fetch_job_access, scope_refusal
from raywarden.gateway.request import Target, encode_path
from raywarden.gateway.route_model import Routed
from raywarden.policy.engine import Decision, Entity
from raywarden.policy.entities import job_entity

# The dashboard reads a job's driver log as a worker log file; its owner may read it ("jobs.logs") even
# without "dashboard.logs", which covers every worker log on every node.
_DRIVER_LOG = re.compile(r"job-driver-([A-Za-z0-9][A-Za-z0-9_\-.]{0,127})\.log")
_DRIVER_LOG_QUERY = frozenset(
    {"node_id", "node_ip", "filename", "lines", "filter_ansi_code", "timeout", "download_filename"}
)


def driver_log_job(target: Target) -> str | None:
    """The submission id when a log request asks for exactly one job's driver log, else None."""
    names = {name for name, _ in target.query}
    if not names or names - _DRIVER_LOG_QUERY:
        return None
    found = _DRIVER_LOG.fullmatch(target.get("filename") or "")
    return found.group(1) if found else None


class Dashboard:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.upstream = services.upstream

    async def handle(self, ex: Exchange, found: Routed, request: Request) -> Response:
        route = found.route
        identity = await authenticate(self.services, ex, request.scope, session=route.session)
        await body_of(self.services, request, route)
        resource = await resource_for(ex, found, identity, self.services.jobs)
        viewer = viewer_for(ex, identity)
        entity = resource.entity
        decision = decide(ex, viewer, route.action, entity, identity.groups)
        if not decision.allowed and route.scope == "driver_log":
            decision, entity = await self._driver_log(ex, viewer, found, decision, entity, identity.groups)
        if not decision.allowed:
            raise refusal_for(viewer, route.action, entity, decision, job=route.resource == "job")
        await ex.allow()
        if not resource.known:
            raise unknown_job(entity.id)
        if (asset := await dashboard_assets.serve(ex, found, request.method)) is not None:
            return asset  # the app's code from the installed package, never from the upstream (dashboard_assets.py)
        access = (
            await fetch_job_access(self.upstream, viewer, self.services.max_filtered_bytes)
            if route.needs_job_access
            else None
        )
        if access is not None:
            scoped = scope_refusal(route.scope, found.target, found.params, access)
            if scoped is not None:
                raise scoped
        keep = answer_filter(found, viewer, entity, access)
        path = encode_path(route.upstream_path(found.target.path))
        headers = forwarded_headers(request, filtered=keep is not None)
        return await forward(self.services, ex, request.method, path, found.target.query_string, headers, None, keep)

    async def _driver_log(
        self, ex: Exchange, viewer: Viewer, found: Routed, denied: Decision, entity: Entity, groups: tuple[str, ...]
    ) -> tuple[Decision, Entity]:
        """A job's driver log, asked for by the dashboard's job page: decided as "jobs.logs" on that job."""
        sid = driver_log_job(found.target)
        info = await self.services.jobs.info(sid, fresh=reads_job_status(ex.engine, "jobs.logs")) if sid else None
        if sid is None or info is None:
            return denied, entity
        job = job_entity(sid, info)
        decision = viewer.decide("jobs.logs", job)
        if not decision.allowed:
            return denied, entity
        note(ex, viewer, "jobs.logs", job, decision, groups)
        return decision, job

"""Ray's Jobs, packages and Serve APIs (``kind="ray_api"``): decide, record, forward, filter, record.

A job submission is parsed within bounds, stamped with its owner and decided on what was parsed; the body
Ray receives is re-serialised from that. A package never overwrites a stored one, and a submission id never
names a second job (gateway/jobaccess.py).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from raywarden.gateway.authz import authorize, resource_for, unknown_job
from raywarden.gateway.exchange import Exchange
from raywarden.gateway.handlers import Services, answer_filter, authenticate, body_of, forwarded_headers, relay
from raywarden.gateway.jobaccess import fetch_jobs, submission_id_refusal, submission_id_shape_refusal
from raywarden.gateway.jobs import effective_submission_id, parse_submission, stamp_owner
from raywarden.gateway.locks import KeyedLocks
from raywarden.gateway.packages import PackageUploads
from raywarden.gateway.request import encode_path
from raywarden.gateway.responses import Refusal
from raywarden.gateway.routes import Routed
from raywarden.gateway.upstream import UpstreamResponse

# What Ray's head answers (500, with a traceback) when its job agent refuses a submission id it holds.
_RAY_DUPLICATE = "already exists. Please use a different submission_id"


class RayApi:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.upstream = services.upstream
        self.packages = PackageUploads(services.upstream)
        self.submission_ids = KeyedLocks()

    async def handle(self, ex: Exchange, found: Routed, request: Request) -> Response:
        route = found.route
        identity = await authenticate(self.services, ex, request.scope, session=route.session)
        body = await body_of(self.services, request, route)
        submission: dict[str, Any] | None = None
        submission_id = None
        if route.body == "job_submit":
            job = parse_submission(body or b"")
            submission_id = effective_submission_id(job)
            shape = submission_id_shape_refusal(submission_id) if submission_id else None
            if shape is not None:
                raise shape
            submission = job.model_dump(exclude_none=True)
            body = stamp_owner(job, identity.spiffe_id)
        resource = await resource_for(found, identity, self.upstream, submission)
        viewer = await authorize(ex, route, identity, resource)
        await ex.allow()
        if not resource.known:
            # Answered like a job the caller may not view, so that neither reveals which it is.
            raise unknown_job(resource.entity.id)
        path = encode_path(route.upstream_path(found.target.path))
        keep = answer_filter(found, viewer, resource.entity, None)
        headers = forwarded_headers(request, filtered=keep is not None)
        query = found.target.query_string
        if route.body == "package":
            async with self.packages.exclusive(path):
                exists = await self.packages.overwrite_refusal(path)
                if exists is not None:
                    raise exists
                answer = await self.upstream.request(request.method, path, query, headers, body)
        elif submission_id is not None:
            answer = await self._submit_named(submission_id, path, headers, body)
        else:
            answer = await self.upstream.request(request.method, path, query, headers, body)
        return await relay(ex, answer, keep)

    async def _submit_named(
        self, submission_id: str, path: str, headers: dict[str, str], body: bytes | None
    ) -> UpstreamResponse:
        """A submission with a chosen id: refused when the id already names a job, ignoring case (Ray's state
        API compares ids that way). The check and the submission hold the id, so two cannot both pass."""
        async with self.submission_ids.holding(submission_id.casefold()):
            taken = submission_id_refusal(submission_id, await fetch_jobs(self.upstream))
            if taken is not None:
                raise taken
            answer = await self.upstream.request("POST", path, "", headers, body)
        if answer.status >= 500 and _RAY_DUPLICATE.encode() in answer.body:
            # Another gateway process won the race for this id: Ray refused it, say so plainly.
            raise Refusal(
                409,
                f"submission id {submission_id!r} already names a job",
                reason="Ray refused the submission: the submission id already exists",
                hint="choose another submission id, or leave it out and Ray chooses one",
            )
        return answer

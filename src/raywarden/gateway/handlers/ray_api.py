"""Ray's Jobs, packages and Serve APIs (``kind="ray_api"``): decide, record, forward, filter, record.

A job submission is parsed within bounds, stamped with its owner and decided on what was parsed; the body
Ray receives is re-serialised from that. A package never overwrites a stored one, and a submission id never
names a second job (gateway/jobaccess.py).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from raywarden.gateway import owner_seal
from raywarden.gateway.authz import authorize, resource_for, unknown_job
from raywarden.gateway.exchange import Exchange
from raywarden.gateway.handlers import (
    Filter,
    Services,
    answer_filter,
    authenticate,
    body_of,
    forward,
    forwarded_headers,
    relay,
    streamed_body,
)
from raywarden.gateway.jobaccess import fetch_jobs, submission_id_refusal, submission_id_shape_refusal
from raywarden.gateway.jobs import effective_submission_id, parse_submission, stamp_owner
from raywarden.gateway.locks import KeyedLocks
from raywarden.gateway.packages import PackageUploads
from raywarden.gateway.request import encode_path
from raywarden.gateway.responses import Refusal
from raywarden.gateway.route_model import Routed
from raywarden.gateway.upstream import Body, UpstreamUnavailable

# What Ray's head answers (500, with a traceback) when its job agent refuses a submission id it holds.
_RAY_DUPLICATE = "already exists. Please use a different submission_id"


class RayApi:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.upstream = services.upstream
        self.packages = PackageUploads(services.upstream, services.locks_dir)
        # Held while a chosen submission id is checked and submitted, and while a job is deleted: shared by
        # the gateway's workers, so that no id is claimed twice or reused while workers still know its owner.
        self.submission_ids = KeyedLocks(services.locks_dir, "submission-id")

    async def handle(self, ex: Exchange, found: Routed, request: Request) -> Response:
        route = found.route
        identity = await authenticate(self.services, ex, request.scope, session=route.session)
        upload = streamed_body(self.services, request, route) if route.body == "package" else None
        body = None if upload is not None else await body_of(self.services, request, route)
        submission: dict[str, Any] | None = None
        submission_id = None
        if route.body == "job_submit":
            job = parse_submission(body or b"")
            submission_id = effective_submission_id(job)
            shape = submission_id_shape_refusal(submission_id) if submission_id else None
            if shape is not None:
                raise shape
            submission = job.model_dump(exclude_none=True)
            body = stamp_owner(job, identity.spiffe_id, owner_seal.current())
        resource = await resource_for(ex, found, identity, self.services.jobs, submission)
        viewer = await authorize(ex, route, identity, resource)
        await ex.allow()
        if not resource.known:
            # Answered like a job the caller may not view, so that neither reveals which it is.
            raise unknown_job(resource.entity.id)
        path = encode_path(route.upstream_path(found.target.path))
        keep = answer_filter(found, viewer, resource.entity, None, self.services.jobs)
        headers = forwarded_headers(request, filtered=keep is not None)
        query = found.target.query_string
        if upload is not None:
            async with self.packages.exclusive(path):
                exists = await self.packages.overwrite_refusal(path)
                if exists is not None:
                    raise exists
                try:
                    return await forward(self.services, ex, request.method, path, query, headers, upload.chunks(), keep)
                except UpstreamUnavailable:
                    if upload.refusal is not None:  # the body outgrew its limit on the way
                        raise upload.refusal from None
                    raise
        if route.forgets_job:
            return await self._delete(ex, resource.entity.attrs, path, query, headers, keep)
        if submission_id is not None:
            return await self._submit_named(ex, submission_id, path, headers, body)
        return await forward(self.services, ex, request.method, path, query, headers, body, keep)

    async def _delete(
        self, ex: Exchange, job: dict[str, Any], path: str, query: str, headers: dict[str, str], keep: Filter | None
    ) -> Response:
        """A job's delete. Its ids go to every worker's job records before Ray is asked and again after, while
        the id is held against a new submission of the same id (gateway/jobrecords.py)."""
        ids = [i for i in (job.get("submission_id"), job.get("job_id")) if isinstance(i, str) and i]
        name = (job.get("submission_id") or job.get("job_id") or "").casefold()
        async with self.submission_ids.holding(name):
            self.services.jobs.deleting(ids)
            try:
                response = await forward(self.services, ex, "DELETE", path, query, headers, None, keep)
            finally:
                self.services.jobs.deleting(ids)
        return response

    async def _submit_named(
        self, ex: Exchange, submission_id: str, path: str, headers: dict[str, str], body: Body
    ) -> Response:
        """A submission with a chosen id: refused when the id already names a job, ignoring case (Ray's state
        API compares ids that way). The check and the submission hold the id, so two cannot both pass."""
        async with self.submission_ids.holding(submission_id.casefold()):
            taken = submission_id_refusal(submission_id, await fetch_jobs(self.upstream))
            if taken is not None:
                raise taken
            answer = await self.upstream.request(
                "POST",
                path,
                "",
                headers,
                body,
                traceparent=ex.trace.traceparent,
                timing=lambda t: ex.spent("upstream", t),
            )
        if answer.status >= 500 and _RAY_DUPLICATE.encode() in answer.body:
            # Another gateway process won the race for this id: Ray refused it, say so plainly.
            raise Refusal(
                409,
                f"submission id {submission_id!r} already names a job",
                reason="Ray refused the submission: the submission id already exists",
                hint="choose another submission id, or leave it out and Ray chooses one",
            )
        return await relay(ex, answer)

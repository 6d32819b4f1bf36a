"""Build the Cedar resource entity a request acts on, from the route, its path parameters and body."""

from __future__ import annotations

from typing import Any

from raywarden.gateway.auth import Identity
from raywarden.gateway.jobs import OWNER_KEY, JobSubmitBody
from raywarden.gateway.routes import Match
from raywarden.gateway.upstream import Upstream
from raywarden.policy.engine import CLUSTER_ID, Entity

IN_CLUSTER = (("Cluster", CLUSTER_ID),)


async def resource_for(found: Match, identity: Identity, submission: JobSubmitBody | None,
                       upstream: Upstream) -> Entity:
    kind = found.route.resource
    if kind == "cluster":
        return Entity("Cluster", CLUSTER_ID)
    if kind == "package":
        name = found.params["package_name"]
        return Entity("Package", name, {"name": name}, IN_CLUSTER)
    if kind == "new_job":
        if submission is None:
            raise ValueError("a job submission route without a parsed body")
        job_id = submission.submission_id or submission.job_id or "(new)"
        new = {"job_id": job_id, "owner": identity.spiffe_id, "entrypoint": submission.entrypoint}
        return Entity("Job", job_id, new, IN_CLUSTER)
    job_id = found.params["job_id"]
    # The owner comes from Ray's record of the job, where the gateway wrote it at submission.
    info = await upstream.job_info(job_id)
    attrs: dict[str, Any] = {"job_id": job_id}
    if info is not None:
        owner = (info.get("metadata") or {}).get(OWNER_KEY)
        if isinstance(owner, str):
            attrs["owner"] = owner
        if isinstance(info.get("entrypoint"), str):
            attrs["entrypoint"] = info["entrypoint"]
    return Entity("Job", job_id, attrs, IN_CLUSTER)

"""Response filtering for the Jobs API: job lists reduced to the jobs the caller may view, environment variable values
redacted for everyone but those the policy lets read them, and "not found" for jobs the caller may not view.

Every choice here is a policy decision ("jobs.read" and "jobs.read_env" on each job), never an owner check
written in Python, so `raywarden policy explain` accounts for what a response shows.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from raywarden.gateway.responses import Refusal
from raywarden.policy.engine import Decision, Entity, PolicyEngine, PolicyRequest
from raywarden.policy.entities import job_entity
from raywarden.policy.jobattrs import job_entity_id

REDACTED = "<redacted>"
# Job routes whose refusal is answered as "no such job" when the caller may not even view the job.
JOB_ACTIONS = frozenset({"jobs.read", "jobs.logs", "jobs.logs_tail", "jobs.stop", "jobs.delete"})
NOT_FOUND_MESSAGE = "no such job"
NOT_FOUND_HINT = "`raywarden job list` shows the jobs you may see"


class FilterError(Exception):
    """Ray's response could not be read, so it cannot be filtered: it is not relayed either."""


@dataclass(frozen=True)
class Viewer:
    """Who a response is for, as the policy sees them."""

    engine: PolicyEngine
    principal: Entity
    context: dict[str, Any]

    def decide(self, action: str, resource: Entity) -> Decision:
        return self.engine.decide(PolicyRequest(self.principal, action, resource, self.context))


def not_found(decision: Decision) -> Refusal:
    """The refusal for a job the caller may not view: the client sees what a missing job looks like,
    the audit log keeps the real reason."""
    return Refusal(
        404,
        NOT_FOUND_MESSAGE,
        hint=NOT_FOUND_HINT,
        reason=f"{decision.reason}; answered 404 because the caller may not view this job",
    )


def unknown_job(job_id: str) -> Refusal:
    return Refusal(404, NOT_FOUND_MESSAGE, hint=NOT_FOUND_HINT, reason=f"job {job_id} is unknown to Ray")


def refusal_for_job(viewer: Viewer, action: str, resource: Entity, decision: Decision) -> Refusal:
    """403 when the caller may view the job but not do this to it; 404 when it may not even view it."""
    view = decision if action == "jobs.read" else viewer.decide("jobs.read", resource)
    if not view.allowed:
        return not_found(decision)
    return Refusal(
        403,
        "forbidden",
        reason=decision.reason,
        hint="ask an administrator for access; policies decide per action and resource",
    )


def redact_env(job: dict[str, Any]) -> dict[str, Any]:
    """A copy of Ray's JobDetails with every environment variable value replaced (names stay visible)."""
    env = job.get("runtime_env")
    if not isinstance(env, dict):
        return job
    job = copy.copy(job)
    env = copy.deepcopy(env)
    if isinstance(env.get("env_vars"), dict):
        env["env_vars"] = {k: REDACTED for k in env["env_vars"]}
    conda = env.get("conda")
    if isinstance(conda, dict) and isinstance(conda.get("variables"), dict):
        conda["variables"] = {k: REDACTED for k in conda["variables"]}
    job["runtime_env"] = env
    return job


def load_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FilterError(f"Ray's response is not JSON: {exc}") from None


def filter_job_list(viewer: Viewer, body: bytes) -> tuple[bytes, dict[str, int]]:
    """Ray's job list without the jobs the caller may not view, env values redacted where not allowed."""
    jobs = load_json(body)
    if not isinstance(jobs, list) or not all(isinstance(j, dict) for j in jobs):
        raise FilterError("Ray's job list is not a list of objects")
    if not jobs:
        return body, {"shown": 0, "hidden": 0}
    entities = [job_entity(job_entity_id(j, f"(job {i})"), j) for i, j in enumerate(jobs)]
    requests = [
        PolicyRequest(viewer.principal, action, entity, viewer.context)
        for entity in entities
        for action in ("jobs.read", "jobs.read_env")
    ]
    decisions = viewer.engine.decide_many(requests)
    shown = []
    for index, job in enumerate(jobs):
        may_read, may_read_env = decisions[2 * index], decisions[2 * index + 1]
        if may_read.allowed:
            shown.append(job if may_read_env.allowed else redact_env(job))
    return json.dumps(shown).encode(), {"shown": len(shown), "hidden": len(jobs) - len(shown)}


def filter_job_details(viewer: Viewer, resource: Entity, body: bytes) -> bytes:
    """One job's details, env values redacted unless the policy allows "jobs.read_env" on it."""
    job = load_json(body)
    if not isinstance(job, dict):
        raise FilterError("Ray's job details are not an object")
    if viewer.decide("jobs.read_env", resource).allowed:
        return body
    return json.dumps(redact_env(job)).encode()

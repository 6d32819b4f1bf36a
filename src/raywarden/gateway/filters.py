"""Response filtering: job lists reduced to the jobs the caller may view, environment variable values
redacted for everyone but those the policy lets read them, and "not found" for jobs the caller may not view.

Every choice here is a policy decision ("jobs.read" and "jobs.read_env" on each job), never an owner check
written in Python, so `raywarden policy explain` accounts for what a response shows.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from raywarden.gateway.responses import Refusal
from raywarden.policy.engine import CLUSTER_ID, Decision, Entity, PolicyEngine, PolicyRequest
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
    return Refusal(404, NOT_FOUND_MESSAGE, hint=NOT_FOUND_HINT,
                   reason=f"{decision.reason}; answered 404 because the caller may not view this job")


def unknown_job(job_id: str) -> Refusal:
    return Refusal(404, NOT_FOUND_MESSAGE, hint=NOT_FOUND_HINT, reason=f"job {job_id} is unknown to Ray")


def refusal_for_job(viewer: Viewer, action: str, resource: Entity, decision: Decision) -> Refusal:
    """403 when the caller may view the job but not do this to it; 404 when it may not even view it."""
    view = decision if action == "jobs.read" else viewer.decide("jobs.read", resource)
    if not view.allowed:
        return not_found(decision)
    return Refusal(403, "forbidden", reason=decision.reason,
                   hint="ask an administrator for access; policies decide per action and resource")


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


def _load(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FilterError(f"Ray's response is not JSON: {exc}") from None


def filter_job_list(viewer: Viewer, body: bytes) -> tuple[bytes, dict[str, int]]:
    """Ray's job list without the jobs the caller may not view, env values redacted where not allowed."""
    jobs = _load(body)
    if not isinstance(jobs, list) or not all(isinstance(j, dict) for j in jobs):
        raise FilterError("Ray's job list is not a list of objects")
    if not jobs:
        return body, {"shown": 0, "hidden": 0}
    entities = [job_entity(job_entity_id(j, f"(job {i})"), j) for i, j in enumerate(jobs)]
    requests = [PolicyRequest(viewer.principal, action, entity, viewer.context)
                for entity in entities for action in ("jobs.read", "jobs.read_env")]
    decisions = viewer.engine.decide_many(requests)
    shown = []
    for index, job in enumerate(jobs):
        may_read, may_read_env = decisions[2 * index], decisions[2 * index + 1]
        if may_read.allowed:
            shown.append(job if may_read_env.allowed else redact_env(job))
    return json.dumps(shown).encode(), {"shown": len(shown), "hidden": len(jobs) - len(shown)}


def filter_job_details(viewer: Viewer, resource: Entity, body: bytes) -> bytes:
    """One job's details, env values redacted unless the policy allows "jobs.read_env" on it."""
    job = _load(body)
    if not isinstance(job, dict):
        raise FilterError("Ray's job details are not an object")
    if viewer.decide("jobs.read_env", resource).allowed:
        return body
    return json.dumps(redact_env(job)).encode()


# -- Ray dashboard responses (docs/browser.md) ---------------------------------------------------------------
# The gateway strips the browser headers that would make Ray redact runtime environments itself, so it
# redacts here, per job, with the same "jobs.read" / "jobs.read_env" decisions as the Jobs API.

# Dashboard routes whose answer is filtered, by the template of the route (under the dashboard mount).
STATE_LISTS = {"/api/v0/tasks": "job_id", "/api/v0/actors": "job_id", "/api/v0/jobs": "job_id",
               "/api/v0/placement_groups": "creator_job_id"}
DASHBOARD_FILTERS = frozenset({*STATE_LISTS, "/api/v0/runtime_envs", "/logical/actors", "/api/profiling_enabled"})
# Filters that need Ray's job list to know each entry's job.
NEEDS_JOBS = frozenset({*STATE_LISTS, "/logical/actors"})


@dataclass(frozen=True)
class JobAccess:
    """Per Ray job id (hex): may the caller see it, and its env values?"""

    by_job_id: dict[str, tuple[bool, bool]]
    unknown: tuple[bool, bool]  # for a job id Ray's job list does not name (no owner)

    def of(self, job_id: object) -> tuple[bool, bool]:
        return self.by_job_id.get(str(job_id), self.unknown) if job_id else self.unknown


def job_access(viewer: Viewer, ray_jobs_body: bytes) -> JobAccess:
    """One batch of decisions over Ray's job list (the same per-job decision as filter_job_list)."""
    jobs = _load(ray_jobs_body)
    if not isinstance(jobs, list) or not all(isinstance(j, dict) for j in jobs):
        raise FilterError("Ray's job list is not a list of objects")
    entities = [job_entity(job_entity_id(j, f"(job {i})"), j) for i, j in enumerate(jobs)]
    entities.append(job_entity("(unknown job)", None))
    requests = [PolicyRequest(viewer.principal, action, entity, viewer.context)
                for entity in entities for action in ("jobs.read", "jobs.read_env")]
    decisions = viewer.engine.decide_many(requests)
    access: dict[str, tuple[bool, bool]] = {}
    for index, job in enumerate(jobs):
        if job.get("job_id"):
            access[str(job["job_id"])] = (decisions[2 * index].allowed, decisions[2 * index + 1].allowed)
    last = len(jobs)
    return JobAccess(access, (decisions[2 * last].allowed, decisions[2 * last + 1].allowed))


def redact_runtime_envs(value: Any) -> Any:
    """A copy with every env var value (and conda variable) replaced, wherever a runtime env appears:
    as an object, or serialized as a JSON string (``serialized_runtime_env`` in task and actor state)."""
    if isinstance(value, list):
        return [redact_runtime_envs(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key in ("env_vars", "variables") and isinstance(item, dict):
            out[key] = {k: REDACTED for k in item}
        elif isinstance(item, str) and "runtime_env" in key and item.startswith("{"):
            try:
                parsed = json.loads(item)
            except ValueError:
                out[key] = REDACTED  # unreadable: it may still hold a secret
            else:
                out[key] = json.dumps(redact_runtime_envs(parsed))
        else:
            out[key] = redact_runtime_envs(item)
    return out


def filter_dashboard(template: str, viewer: Viewer, body: bytes,
                     access: JobAccess | None) -> tuple[bytes, dict[str, int]]:
    """Ray's answer for one filtered dashboard route, reduced to what the caller may see."""
    data = _load(body)
    if not isinstance(data, dict):
        raise FilterError("Ray's dashboard answer is not an object")
    if template == "/api/profiling_enabled":
        may_profile = viewer.decide("dashboard.profile", Entity("Cluster", CLUSTER_ID)).allowed
        inner = data.get("data")
        if not may_profile and isinstance(inner, dict):
            # The UI then greys out the profiling links instead of offering what the gateway refuses.
            data = {**data, "data": {**inner, "profilingEnabled": False}}
        return json.dumps(data).encode(), {}
    if template == "/api/v0/runtime_envs":
        # Runtime envs are not tied to a job here: values are redacted for everyone.
        return json.dumps(redact_runtime_envs(data)).encode(), {}
    if access is None:
        raise FilterError("no job decisions for a per-job filter")
    if template == "/logical/actors":
        actors = (data.get("data") or {}).get("actors")
        if not isinstance(actors, dict):
            raise FilterError("Ray's actor table is not an object")
        kept = {k: (a if access.of(a.get("jobId"))[1] else redact_runtime_envs(a))
                for k, a in actors.items() if isinstance(a, dict) and access.of(a.get("jobId"))[0]}
        data = {**data, "data": {**data["data"], "actors": kept}}
        return json.dumps(data).encode(), {"shown": len(kept), "hidden": len(actors) - len(kept)}
    key = STATE_LISTS[template]
    listing = (data.get("data") or {}).get("result")
    entries = listing.get("result") if isinstance(listing, dict) else None
    if not isinstance(entries, list):
        raise FilterError("Ray's state answer has no result list")
    kept_entries = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        may_read, may_read_env = access.of(entry.get(key))
        if may_read:
            kept_entries.append(entry if may_read_env else redact_runtime_envs(entry))
    assert isinstance(listing, dict)  # noqa: S101 - checked above
    hidden = len(entries) - len(kept_entries)
    listing = {**listing, "result": kept_entries}
    if hidden and isinstance(listing.get("num_after_truncation"), int):
        listing["num_after_truncation"] = len(kept_entries)
    if hidden and isinstance(listing.get("total"), int):
        listing["total"] = max(0, listing["total"] - hidden)
    data = {**data, "data": {**data["data"], "result": listing}}
    return json.dumps(data).encode(), {"shown": len(kept_entries), "hidden": hidden}


# The dashboard reads a job's driver log as a worker log file; its owner may read it ("jobs.logs") even
# without "dashboard.logs", which covers every worker log on every node.
_DRIVER_LOG = re.compile(r"job-driver-([A-Za-z0-9][A-Za-z0-9_\-.]{0,127})\.log")
_DRIVER_LOG_QUERY = frozenset({"node_id", "node_ip", "filename", "lines", "filter_ansi_code", "timeout",
                               "download_filename"})


def driver_log_job(query: str) -> str | None:
    """The submission id when a log request asks for exactly one job's driver log, else None."""
    params = parse_qs(query, keep_blank_values=True, max_num_fields=16)
    if not params or set(params) - _DRIVER_LOG_QUERY or any(len(v) != 1 for v in params.values()):
        return None
    found = _DRIVER_LOG.fullmatch(params.get("filename", [""])[0])
    return found.group(1) if found else None

"""Ray dashboard answers, kept to the jobs the caller may view (docs/browser.md).

Ray's dashboard shows every job's tasks, actors, workers and events to anyone who may load it. The gateway
strips the browser headers that would make Ray redact runtime environments itself, and then:
- lists (tasks, actors, jobs, placement groups, events, a node's workers and actors) lose the entries of
  jobs the caller may not view, and env var values are redacted where the caller may not read them;
- answers about one job (its events, task summary, timeline, datasets) are refused with "no such job"
  unless the caller may view that job, exactly as for a job Ray does not know;
- answers that aggregate every job (a task summary or timeline without a job filter) need the caller to
  be allowed to view every job there is.
Every choice is the same "jobs.read" / "jobs.read_env" policy decision as the Jobs API makes, per job.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from raywarden.gateway.filters import REDACTED, FilterError, Viewer, load_json
from raywarden.gateway.responses import Refusal
from raywarden.gateway.upstream import Upstream
from raywarden.policy.engine import CLUSTER_ID, Entity, PolicyRequest
from raywarden.policy.entities import job_entity
from raywarden.policy.jobattrs import job_entity_id

# Dashboard routes (by their template as Ray knows it) whose answers are lists of entries with a job id.
STATE_LISTS = {
    "/api/v0/tasks": "job_id",
    "/api/v0/actors": "job_id",
    "/api/v0/jobs": "job_id",
    "/api/v0/placement_groups": "creator_job_id",
}
PER_JOB_ANSWERS = frozenset(
    {*STATE_LISTS, "/logical/actors", "/logical/actors/{actor_id}", "/events", "/nodes", "/nodes/{node_id}"}
)
# Routes whose answer is filtered after Ray answers.
DASHBOARD_FILTERS = frozenset(
    {*PER_JOB_ANSWERS, "/api/v0/runtime_envs", "/api/profiling_enabled", "/api/serve/applications/"}
)
# Routes scoped to one job (or to all of them) by their path or query: decided before Ray is asked.
SCOPED = frozenset({"/api/v0/tasks/summarize", "/api/v0/tasks/timeline", "/api/data/datasets/{job_id}", "/events"})
NEEDS_JOBS = PER_JOB_ANSWERS | SCOPED

# Ray's event store keeps cluster events (node added, autoscaler) under this key, not under a job.
CLUSTER_EVENTS = "global"
NOT_FOUND_HINT = "open the job from the dashboard's job list, which shows the jobs you may see"


@dataclass(frozen=True)
class JobAccess:
    """Per Ray job (by hex job id or submission id): may the caller see it, and its env values?"""

    by_job: dict[str, tuple[bool, bool]]
    unknown: tuple[bool, bool]  # for a job Ray's job list does not name (no owner)

    def of(self, job: object) -> tuple[bool, bool]:
        return self.by_job.get(str(job), self.unknown) if job else self.unknown

    @property
    def sees_every_job(self) -> bool:
        """True when the caller may view every job Ray lists and any job it might not list yet."""
        return self.unknown[0] and all(read for read, _ in self.by_job.values())


def job_access(viewer: Viewer, ray_jobs_body: bytes) -> JobAccess:
    """One batch of decisions over Ray's job list (the same per-job decision as the Jobs API's list)."""
    jobs = load_json(ray_jobs_body)
    if not isinstance(jobs, list) or not all(isinstance(j, dict) for j in jobs):
        raise FilterError("Ray's job list is not a list of objects")
    entities = [job_entity(job_entity_id(j, f"(job {i})"), j) for i, j in enumerate(jobs)]
    entities.append(job_entity("(unknown job)", None))
    requests = [
        PolicyRequest(viewer.principal, action, entity, viewer.context)
        for entity in entities
        for action in ("jobs.read", "jobs.read_env")
    ]
    decisions = viewer.engine.decide_many(requests)
    access: dict[str, tuple[bool, bool]] = {}
    for index, job in enumerate(jobs):
        pair = (decisions[2 * index].allowed, decisions[2 * index + 1].allowed)
        for key in ("job_id", "submission_id"):
            if job.get(key):
                access[str(job[key])] = pair
    last = len(jobs)
    return JobAccess(access, (decisions[2 * last].allowed, decisions[2 * last + 1].allowed))


async def fetch_job_access(upstream: Upstream, viewer: Viewer) -> JobAccess:
    """Ray's job list, decided per job for ``viewer``; FilterError when Ray does not answer it."""
    jobs = await upstream.request("GET", "/api/jobs/", "", {"accept": "application/json"}, None)
    if jobs.status != 200:
        raise FilterError(f"Ray answered {jobs.status} for its job list")
    return job_access(viewer, jobs.body)


# -- before Ray is asked ---------------------------------------------------------------------------------------


def scope_refusal(template: str, params: dict[str, str], query: str, access: JobAccess) -> Refusal | None:
    """The refusal for a job-scoped dashboard request the caller may not see, or None."""
    args = parse_qs(query, keep_blank_values=True)
    if template == "/api/data/datasets/{job_id}":
        return _one_job(params["job_id"], access)
    if template == "/events":
        job = args.get("job_id", [None])[-1]
        return None if job is None or job == CLUSTER_EVENTS else _one_job(job, access)
    if template == "/api/v0/tasks/timeline":
        job = args.get("job_id", [None])[-1]
        return _every_job(access) if not job else _one_job(job, access)
    if template == "/api/v0/tasks/summarize":
        jobs = _equality_filters(args, "job_id")
        return _every_job(access) if not jobs else next(filter(None, (_one_job(j, access) for j in jobs)), None)
    return None


def _one_job(job: str, access: JobAccess) -> Refusal | None:
    if access.of(job)[0]:
        return None
    # The same answer whether the job exists or not, so that it reveals neither.
    return Refusal(
        404,
        "no such job",
        hint=NOT_FOUND_HINT,
        reason=f"dashboard request scoped to job {job}, which the caller may not view (or Ray lacks)",
    )


def _every_job(access: JobAccess) -> Refusal | None:
    if access.sees_every_job:
        return None
    return Refusal(
        403,
        "this answer covers every job, and you may not view all of them",
        reason="unscoped dashboard summary of all jobs; the caller may not view every job",
        hint="open one of your jobs in the dashboard: its page shows that job's tasks and timeline",
    )


def _equality_filters(args: dict[str, list[str]], key: str) -> list[str]:
    """Values of Ray state-API filters ``key = value`` (filter_keys / filter_predicates / filter_values)."""
    keys, predicates, values = (args.get(k, []) for k in ("filter_keys", "filter_predicates", "filter_values"))
    if not len(keys) == len(predicates) == len(values):
        return []  # Ray refuses misaligned filters; nothing here narrows the answer to a job
    return [v for k, p, v in zip(keys, predicates, values, strict=True) if k == key and p == "="]


# -- after Ray answers -----------------------------------------------------------------------------------------


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


NIL_JOB = "ffffffff"


def job_of(entry: dict[str, Any], key: str, actor_id: str | None = None) -> object:
    """The job an entry belongs to: its job id field or, when that is missing or Ray's nil id, the job
    embedded in its actor's id (Ray's actor ids end with their job's id). Ray merges the actor's worker
    stats into its actor records, and those can carry nil job and actor ids: the id the record is filed
    under (``actor_id``) is then the one to trust."""
    job = entry.get(key)
    if job and job != NIL_JOB:
        return job
    for actor in (actor_id, entry.get("actorId"), entry.get("actor_id")):
        if isinstance(actor, str) and len(actor) == 32 and actor[-8:] != NIL_JOB:
            return actor[-8:]
    return job


class _Counter:
    """Keeps entries of viewable jobs (redacted unless their env may be read) and counts what it hid."""

    def __init__(self, access: JobAccess) -> None:
        self.access, self.shown, self.hidden = access, 0, 0

    def keep(self, entry: Any, job: object) -> Any | None:
        may_read, may_read_env = self.access.of(job)
        if not may_read:
            self.hidden += 1
            return None
        self.shown += 1
        return entry if may_read_env else redact_runtime_envs(entry)

    def keep_list(self, entries: object, key: str) -> list[Any]:
        if not isinstance(entries, list):
            raise FilterError("Ray's dashboard answer has no list where one is expected")
        kept = (self.keep(e, job_of(e, key)) for e in entries if isinstance(e, dict))
        return [e for e in kept if e is not None]

    def keep_dict(self, entries: object, key: str) -> dict[str, Any]:
        if not isinstance(entries, dict):
            raise FilterError("Ray's dashboard answer has no object where one is expected")
        kept = {k: self.keep(e, job_of(e, key, k)) for k, e in entries.items() if isinstance(e, dict)}
        return {k: e for k, e in kept.items() if e is not None}

    @property
    def counts(self) -> dict[str, int]:
        return {"shown": self.shown, "hidden": self.hidden}


def filter_dashboard(
    template: str,
    viewer: Viewer,
    body: bytes,
    access: JobAccess | None,
    query: str = "",
    params: dict[str, str] | None = None,
) -> tuple[bytes, dict[str, int]]:
    """Ray's answer for one filtered dashboard route, reduced to what the caller may see."""
    data = load_json(body)
    if not isinstance(data, dict):
        raise FilterError("Ray's dashboard answer is not an object")
    inner = data.get("data")
    if template == "/api/profiling_enabled":
        if isinstance(inner, dict) and not viewer.decide("dashboard.profile", _cluster()).allowed:
            # The UI then greys out the profiling links instead of offering what the gateway refuses.
            data = {**data, "data": {**inner, "profilingEnabled": False}}
        return json.dumps(data).encode(), {}
    if template == "/api/v0/runtime_envs":
        # Runtime envs are not tied to a job here: values are redacted for everyone.
        return json.dumps(redact_runtime_envs(data)).encode(), {}
    if template == "/api/serve/applications/":
        # Serve applications belong to the cluster; their env values only to those who may deploy them.
        if viewer.decide("serve.deploy", _cluster()).allowed:
            return body, {}
        return json.dumps(redact_runtime_envs(data)).encode(), {}
    if access is None:
        raise FilterError("no job decisions for a per-job filter")
    if not isinstance(inner, dict):
        raise FilterError("Ray's dashboard answer has no data object")
    counter = _Counter(access)
    inner = _filter_inner(template, inner, counter, query, params or {})
    return json.dumps({**data, "data": inner}).encode(), counter.counts


def _filter_inner(
    template: str, inner: dict[str, Any], counter: _Counter, query: str, params: dict[str, str]
) -> dict[str, Any]:
    if template == "/logical/actors":
        return {**inner, "actors": counter.keep_dict(inner.get("actors"), "jobId")}
    if template == "/logical/actors/{actor_id}":
        detail = inner.get("detail")
        # An actor of a job the caller may not view reads like an unknown actor (Ray answers null).
        job = job_of(detail, "jobId", params.get("actor_id")) if isinstance(detail, dict) else None
        kept = counter.keep(detail, job) if isinstance(detail, dict) else detail
        return {**inner, "detail": kept}
    if template == "/events":
        return _filter_events(inner, counter, query)
    if template == "/nodes":
        summary = inner.get("summary")
        if summary is None:
            return inner  # view=hostNameList: no per-job data
        if not isinstance(summary, list):
            raise FilterError("Ray's node summary is not a list")
        return {**inner, "summary": [_filter_node(n, counter) for n in summary if isinstance(n, dict)]}
    if template == "/nodes/{node_id}":
        detail = inner.get("detail")
        if not isinstance(detail, dict):
            raise FilterError("Ray's node details are not an object")
        return {**inner, "detail": _filter_node(detail, counter)}
    listing = inner.get("result")
    if not isinstance(listing, dict):
        raise FilterError("Ray's state answer has no result list")
    entries = listing.get("result")
    before = counter.hidden
    kept = counter.keep_list(entries, STATE_LISTS[template])
    hidden = counter.hidden - before
    listing = {**listing, "result": kept}
    if hidden and isinstance(listing.get("num_after_truncation"), int):
        listing["num_after_truncation"] = len(kept)
    if hidden and isinstance(listing.get("total"), int):
        listing["total"] = max(0, listing["total"] - hidden)
    return {**inner, "result": listing}


def _filter_events(inner: dict[str, Any], counter: _Counter, query: str) -> dict[str, Any]:
    events = inner.get("events")
    job = parse_qs(query).get("job_id", [None])[-1]
    if job is not None:
        # One job's events (scope_refusal let the caller through) or the cluster's own events.
        if job == CLUSTER_EVENTS:
            return {**inner, "events": _cluster_events(events, counter)}
        kept = counter.keep(events, job)
        return {**inner, "events": kept if kept is not None else []}
    if not isinstance(events, dict):
        raise FilterError("Ray's event table is not an object")
    shown: dict[str, Any] = {}
    for key, job_events in events.items():
        kept = _cluster_events(job_events, counter) if key == CLUSTER_EVENTS else counter.keep(job_events, key)
        if kept is not None:
            shown[key] = kept
    return {**inner, "events": shown}


def _cluster_events(events: object, counter: _Counter) -> list[Any]:
    """Ray files job submissions and completions ("Started a ray job ...") under the cluster's events, with
    the job in their custom fields: those are kept only for callers who may view that job."""
    if not isinstance(events, list):
        raise FilterError("Ray's cluster events are not a list")
    kept = []
    for event in events:
        job = _event_job(event)
        entry = event if job is None else counter.keep(event, job)
        if entry is not None:
            kept.append(entry)
    return kept


def _event_job(event: object) -> str | None:
    if not isinstance(event, dict):
        return None
    fields = event.get("customFields") or event.get("custom_fields")
    if not isinstance(fields, dict):
        return None
    for key in ("submissionId", "submission_id", "jobId", "job_id"):
        if fields.get(key):
            return str(fields[key])
    return None


def _filter_node(node: dict[str, Any], counter: _Counter) -> dict[str, Any]:
    """A node's workers, actors and per-worker raylet stats, each kept only for viewable jobs."""
    node = dict(node)
    if "workers" in node:
        node["workers"] = counter.keep_list(node["workers"], "jobId")
    if "actors" in node:
        node["actors"] = counter.keep_dict(node["actors"], "jobId")
    raylet = node.get("raylet")
    if isinstance(raylet, dict):
        raylet = dict(raylet)
        for key in ("coreWorkersStats", "workersStats"):
            if key in raylet:
                raylet[key] = counter.keep_list(raylet[key], "jobId")
        node["raylet"] = raylet
    return node


def _cluster() -> Entity:
    return Entity("Cluster", CLUSTER_ID)


# The dashboard reads a job's driver log as a worker log file; its owner may read it ("jobs.logs") even
# without "dashboard.logs", which covers every worker log on every node.
_DRIVER_LOG = re.compile(r"job-driver-([A-Za-z0-9][A-Za-z0-9_\-.]{0,127})\.log")
_DRIVER_LOG_QUERY = frozenset(
    {"node_id", "node_ip", "filename", "lines", "filter_ansi_code", "timeout", "download_filename"}
)


def driver_log_job(query: str) -> str | None:
    """The submission id when a log request asks for exactly one job's driver log, else None."""
    params = parse_qs(query, keep_blank_values=True, max_num_fields=16)
    if not params or set(params) - _DRIVER_LOG_QUERY or any(len(v) != 1 for v in params.values()):
        return None
    found = _DRIVER_LOG.fullmatch(params.get("filename", [""])[0])
    return found.group(1) if found else None

"""Which jobs a caller may see (docs/browser.md), and the redaction of what it may not read.

Every choice here is a Cedar decision ("jobs.read" and "jobs.read_env" on each job, in one batch over Ray's
job list), never an owner check written in Python, so `raywarden policy explain` accounts for what an answer
shows. Each job is decided over its whole record, its (job id, submission id) pair. Ray's answers name jobs
by one id only (a task by its hex job id, an event by a submission id), and Ray compares those ids ignoring
case, so a reference is resolved to every job whose job id or submission id equals it ignoring case: it is
viewable only if every job it can name is. A submission id that could name another job is refused at
submission (``submission_id_refusal``), so such ambiguity only comes from jobs submitted before that check.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raywarden.errors import RaywardenError
from raywarden.gateway import owner_seal
from raywarden.gateway.authz import Viewer
from raywarden.gateway.request import Target
from raywarden.gateway.responses import Refusal
from raywarden.gateway.upstream import MAX_RESPONSE_BYTES, AnswerTooLarge, Upstream
from raywarden.policy.engine import Entity
from raywarden.policy.entities import job_entity
from raywarden.policy.jobattrs import job_attrs, job_entity_id

REDACTED = "<redacted>"
# Ray's event store keeps cluster events (node added, autoscaler) under this key, not under a job.
CLUSTER_EVENTS = "global"
NIL_JOB = "ffffffff"
NOT_FOUND_HINT = "open the job from the dashboard's job list, which shows the jobs you may see"
_HEX = re.compile(r"[0-9A-Fa-f]+")
Access = tuple[bool, bool]  # (may view the job, may read its env values)


class FilterError(RaywardenError):
    """Ray's answer could not be read, so it cannot be filtered: it is not relayed either."""


class StaleJobRecord(FilterError):
    """Ray's answer names another owner for a job than the record the decision was made on."""


def load_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FilterError(f"Ray's answer is not JSON: {exc}") from None


def ray_job_list(body: bytes) -> list[dict[str, Any]]:
    """Ray's job list, each owner as the gateway believes it (gateway/owner_seal.py)."""
    return owner_seal.current().vouch_all(_raw_job_list(body))[0]


def _raw_job_list(body: bytes) -> list[dict[str, Any]]:
    jobs = load_json(body)
    if not isinstance(jobs, list) or not all(isinstance(j, dict) for j in jobs):
        raise FilterError("Ray's job list is not a list of objects")
    return jobs


@dataclass(frozen=True)
class JobAccess:
    """The caller's decisions for every job Ray lists, and for a job it does not list (no owner)."""

    rows: tuple[Access, ...]
    unknown: Access
    # Each id (job id or submission id, case-folded) to every row it can name: a lookup never picks one row.
    names: dict[str, tuple[int, ...]] = field(repr=False)

    def of(self, ref: object) -> Access:
        rows = self.names.get(str(ref).casefold()) if ref else None
        if not rows:
            return self.unknown
        return all(self.rows[i][0] for i in rows), all(self.rows[i][1] for i in rows)

    @property
    def sees_every_job(self) -> bool:
        """True when the caller may view every job Ray lists and any job it might not list yet."""
        return self.unknown[0] and all(read for read, _ in self.rows)


def job_access(viewer: Viewer, jobs: list[dict[str, Any]]) -> JobAccess:
    """One batch of decisions over Ray's job list (the same per-job decision as the Jobs API's list)."""
    entities = [job_entity(job_entity_id(j, f"(job {i})"), j) for i, j in enumerate(jobs)]
    entities.append(job_entity("(unknown job)", None))
    decided = viewer.engine.decide_each(viewer.principal, viewer.context, ("jobs.read", "jobs.read_env"), entities)
    pairs = [(read.allowed, env.allowed) for read, env in decided]
    names: dict[str, list[int]] = {}
    for index, job in enumerate(jobs):
        for key in ("job_id", "submission_id"):
            if isinstance(job.get(key), str) and job[key]:
                rows = names.setdefault(job[key].casefold(), [])
                if index not in rows:
                    rows.append(index)
    return JobAccess(tuple(pairs[:-1]), pairs[-1], {k: tuple(v) for k, v in names.items()})


async def fetch_job_access(upstream: Upstream, viewer: Viewer, limit: int = MAX_RESPONSE_BYTES) -> JobAccess:
    """Ray's job list, decided per job for ``viewer``; FilterError when Ray does not answer it."""
    return job_access(viewer, await fetch_jobs(upstream, limit))


async def fetch_jobs(upstream: Upstream, limit: int = MAX_RESPONSE_BYTES) -> list[dict[str, Any]]:
    try:
        jobs = await upstream.request("GET", "/api/jobs/", "", {"accept": "application/json"}, None, limit=limit)
    except AnswerTooLarge as exc:
        raise FilterError(f"Ray's job list is too large to check: {exc.message}") from None
    if jobs.status != 200:
        raise FilterError(f"Ray answered {jobs.status} for its job list")
    return ray_job_list(jobs.body)


# -- at submission -------------------------------------------------------------------------------------------


def submission_id_shape_refusal(submission_id: str) -> Refusal | None:
    """A submission id made of hex digits only could be read as a Ray job id (by Ray's state API too)."""
    if not _HEX.fullmatch(submission_id):
        return None
    return Refusal(
        400,
        f"submission id {submission_id!r} looks like a Ray job id",
        reason=f"submission id {submission_id!r} is hex only, like Ray's job ids",
        hint="use a submission id with at least one letter outside a-f (for example a prefix such as 'run-'), "
        "or let Ray choose one",
    )


def submission_id_refusal(submission_id: str, jobs: list[dict[str, Any]]) -> Refusal | None:
    """409 when the id equals, ignoring case, any job's job id or submission id (it would name two jobs)."""
    wanted = submission_id.casefold()
    for job in jobs:
        for key in ("submission_id", "job_id"):
            value = job.get(key)
            if isinstance(value, str) and value.casefold() == wanted:
                return Refusal(
                    409,
                    f"submission id {submission_id!r} already names a job",
                    reason=f"submission id {submission_id!r} equals the {key} of an existing job (ignoring case)",
                    hint="choose another submission id, or leave it out and Ray chooses one",
                )
    return None


# -- before Ray is asked ---------------------------------------------------------------------------------------


def scope_refusal(scope: str, target: Target, params: dict[str, str], access: JobAccess) -> Refusal | None:
    """The refusal for a job-scoped dashboard request the caller may not see, or None."""
    if scope == "path":
        return _one_job(params["job_id"], access)
    if scope == "query":
        job = target.get("job_id")
        return None if job is None or job == CLUSTER_EVENTS else _one_job(job, access)
    if scope == "query_or_all":
        job = target.get("job_id")
        return _every_job(access) if not job else _one_job(job, access)
    if scope == "filters_or_all":
        jobs = _equality_filters(target, "job_id")
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
        reason=f"dashboard request scoped to job {job[:128]}, which the caller may not view (or Ray lacks)",
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


def _equality_filters(target: Target, key: str) -> list[str]:
    """Values of Ray state-API filters ``key = value`` (aligned lists, read in order as Ray reads them)."""
    keys, predicates, values = (target.getall(k) for k in ("filter_keys", "filter_predicates", "filter_values"))
    if not len(keys) == len(predicates) == len(values):
        return []  # Ray refuses misaligned filters; nothing here narrows the answer to a job
    return [v for k, p, v in zip(keys, predicates, values, strict=True) if k.casefold() == key and p == "="]


# -- after Ray answers -----------------------------------------------------------------------------------------


def redact_runtime_envs(value: Any) -> Any:
    """A copy with every env var value (and conda variable) replaced, wherever a runtime env appears: as an
    object, or serialized as a JSON string (``serialized_runtime_env`` in task and actor state)."""
    if isinstance(value, list):
        return [redact_runtime_envs(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key in ("env_vars", "variables") and isinstance(item, dict):
            out[key] = dict.fromkeys(item, REDACTED)
        elif isinstance(item, str) and "runtime_env" in key and item.startswith("{"):
            try:
                parsed = json.loads(item)
            except (ValueError, RecursionError):
                out[key] = REDACTED  # unreadable: it may still hold a secret
            else:
                out[key] = json.dumps(redact_runtime_envs(parsed))
        else:
            out[key] = redact_runtime_envs(item)
    return out


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


class Kept:
    """Keeps entries of viewable jobs (redacted unless their env may be read) and counts what it hid."""

    def __init__(self, access: Callable[[object], Access]) -> None:
        self.access, self.shown, self.hidden = access, 0, 0

    def keep(self, entry: Any, job: object) -> Any | None:
        may_read, may_read_env = self.access(job)
        if not may_read:
            self.hidden += 1
            return None
        self.shown += 1
        return entry if may_read_env else redact_runtime_envs(entry)

    def keep_list(self, entries: object, key: str) -> list[Any]:
        if not isinstance(entries, list):
            raise FilterError("Ray's answer has no list where one is expected")
        kept = (self.keep(e, job_of(e, key)) for e in entries if isinstance(e, dict))
        return [e for e in kept if e is not None]

    def keep_dict(self, entries: object, key: str) -> dict[str, Any]:
        if not isinstance(entries, dict):
            raise FilterError("Ray's answer has no object where one is expected")
        kept = {k: self.keep(e, job_of(e, key, k)) for k, e in entries.items() if isinstance(e, dict)}
        return {k: e for k, e in kept.items() if e is not None}

    @property
    def counts(self) -> dict[str, int]:
        return {"shown": self.shown, "hidden": self.hidden}


def filter_job_list(viewer: Viewer, body: bytes) -> tuple[bytes, dict[str, int]]:
    """Ray's job list without the jobs the caller may not view, env values redacted where not allowed. Each
    row is decided on its own record, whatever ids other rows carry."""
    jobs, vouched = owner_seal.current().vouch_all(_raw_job_list(body))
    if not jobs:
        return body, {"shown": 0, "hidden": 0}
    access = job_access(viewer, jobs)
    if not vouched and all(read and env for read, env in access.rows):  # nothing to hide, redact or vouch for
        return body, {"shown": len(jobs), "hidden": 0}
    kept = Kept(lambda index: access.rows[index] if isinstance(index, int) else access.unknown)
    shown = [e for e in (kept.keep(job, i) for i, job in enumerate(jobs)) if e is not None]
    return json.dumps(shown).encode(), kept.counts


def filter_job_details(viewer: Viewer, entity: Entity, body: bytes) -> bytes:
    """One job's record, env values redacted unless the policy allows "jobs.read_env" on it."""
    raw = load_json(body)
    if not isinstance(raw, dict):
        raise FilterError("Ray's job details are not an object")
    job = owner_seal.current().vouch(raw)
    owner = job_attrs(entity.id, job)["owner"]
    if owner != entity.attrs.get("owner"):
        # The decision was made on another owner than Ray now reports (a record cached before a change the
        # gateway did not see): fail closed rather than show it.
        raise StaleJobRecord(
            f"Ray's record of job {entity.id[:128]} names owner {owner[:200]!r}, "
            f"the gateway decided on {str(entity.attrs.get('owner'))[:200]!r}"
        )
    if viewer.decide("jobs.read_env", entity).allowed:
        return body if job is raw else json.dumps(job).encode()
    return json.dumps(redact_runtime_envs(job)).encode()

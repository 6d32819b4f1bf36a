"""Ray's dashboard answers, entry by entry, kept to the jobs the caller may see (the route's ``filter`` in the
route table; the caller's job access from gateway/jobaccess.py, computed once per request)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from raywarden.gateway.authz import CLUSTER, Viewer
from raywarden.gateway.jobaccess import (
    CLUSTER_EVENTS,
    FilterError,
    JobAccess,
    Kept,
    job_of,
    load_json,
    redact_runtime_envs,
)
from raywarden.gateway.request import Target

# One filtered route's step: Ray's "data" object in, the same reduced out.
Step = Callable[[dict[str, Any], Kept, Target, dict[str, str]], dict[str, Any]]


def filter_dashboard(
    name: str, viewer: Viewer, body: bytes, access: JobAccess | None, target: Target, params: dict[str, str]
) -> tuple[bytes, dict[str, int]]:
    """Ray's answer for one filtered dashboard route (its ``filter`` in the route table), reduced to what the
    caller may see."""
    data = load_json(body)
    if not isinstance(data, dict):
        raise FilterError("Ray's dashboard answer is not an object")
    inner = data.get("data")
    if name == "profiling_flag":
        if isinstance(inner, dict) and not viewer.decide("dashboard.profile", CLUSTER).allowed:
            # The UI then greys out the profiling links instead of offering what the gateway refuses.
            data = {**data, "data": {**inner, "profilingEnabled": False}}
        return json.dumps(data).encode(), {}
    if name == "runtime_envs":
        # Runtime envs are not tied to a job here: values are redacted for everyone.
        return json.dumps(redact_runtime_envs(data)).encode(), {}
    if access is None:
        raise FilterError("no job decisions for a per-job filter")
    if not isinstance(inner, dict):
        raise FilterError("Ray's dashboard answer has no data object")
    kept = Kept(access.of)
    inner = _FILTERS[name](inner, kept, target, params)
    return json.dumps({**data, "data": inner}).encode(), kept.counts


def _state_list(key: str) -> Step:
    def keep(inner: dict[str, Any], kept: Kept, _: Target, __: dict[str, str]) -> dict[str, Any]:
        listing = inner.get("result")
        if not isinstance(listing, dict):
            raise FilterError("Ray's state answer has no result list")
        before = kept.hidden
        entries = kept.keep_list(listing.get("result"), key)
        hidden = kept.hidden - before
        listing = {**listing, "result": entries}
        if hidden and isinstance(listing.get("num_after_truncation"), int):
            listing["num_after_truncation"] = len(entries)
        if hidden and isinstance(listing.get("total"), int):
            listing["total"] = max(0, listing["total"] - hidden)
        return {**inner, "result": listing}

    return keep


def _actor_detail(inner: dict[str, Any], kept: Kept, _: Target, params: dict[str, str]) -> dict[str, Any]:
    detail = inner.get("detail")
    if not isinstance(detail, dict):
        return inner
    # An actor of a job the caller may not view reads like an unknown actor (Ray answers null).
    return {**inner, "detail": kept.keep(detail, job_of(detail, "jobId", params.get("actor_id")))}


def _events(inner: dict[str, Any], kept: Kept, target: Target, _: dict[str, str]) -> dict[str, Any]:
    events = inner.get("events")
    job = target.get("job_id")
    if job is not None:
        # One job's events (the scope check let the caller through) or the cluster's own events.
        if job == CLUSTER_EVENTS:
            return {**inner, "events": _cluster_events(events, kept)}
        one = kept.keep(events, job)
        return {**inner, "events": one if one is not None else []}
    if not isinstance(events, dict):
        raise FilterError("Ray's event table is not an object")
    shown = {}
    for key, job_events in events.items():
        one = _cluster_events(job_events, kept) if key == CLUSTER_EVENTS else kept.keep(job_events, key)
        if one is not None:
            shown[key] = one
    return {**inner, "events": shown}


def _cluster_events(events: object, kept: Kept) -> list[Any]:
    """Ray files job submissions and completions ("Started a ray job ...") under the cluster's events, with
    the job in their custom fields: those are kept only for callers who may view that job."""
    if not isinstance(events, list):
        raise FilterError("Ray's cluster events are not a list")
    return [e for e in (e if _event_job(e) is None else kept.keep(e, _event_job(e)) for e in events) if e is not None]


def _event_job(event: object) -> str | None:
    fields = (event.get("customFields") or event.get("custom_fields")) if isinstance(event, dict) else None
    if not isinstance(fields, dict):
        return None
    return next((str(fields[k]) for k in ("submissionId", "submission_id", "jobId", "job_id") if fields.get(k)), None)


def _nodes(key: str) -> Step:
    """/nodes (``summary``: a list of nodes; absent for view=hostNameList) and /nodes/{id} (``detail``)."""

    def keep(inner: dict[str, Any], kept: Kept, _: Target, __: dict[str, str]) -> dict[str, Any]:
        found = inner.get(key)
        if key == "summary" and found is None:
            return inner
        if key == "summary" and isinstance(found, list):
            return {**inner, key: [_node(n, kept) for n in found if isinstance(n, dict)]}
        if key == "detail" and isinstance(found, dict):
            return {**inner, key: _node(found, kept)}
        raise FilterError(f"Ray's node {key} is not what the dashboard reads")

    return keep


def _node(node: dict[str, Any], kept: Kept) -> dict[str, Any]:
    """A node's workers, actors and per-worker raylet stats, each kept only for viewable jobs."""
    node = dict(node)
    if "workers" in node:
        node["workers"] = kept.keep_list(node["workers"], "jobId")
    if "actors" in node:
        node["actors"] = kept.keep_dict(node["actors"], "jobId")
    raylet = node.get("raylet")
    if isinstance(raylet, dict):
        raylet = dict(raylet)
        for key in ("coreWorkersStats", "workersStats"):
            if key in raylet:
                raylet[key] = kept.keep_list(raylet[key], "jobId")
        node["raylet"] = raylet
    return node


def _actor_table(inner: dict[str, Any], kept: Kept, _: Target, __: dict[str, str]) -> dict[str, Any]:
    return {**inner, "actors": kept.keep_dict(inner.get("actors"), "jobId")}


_FILTERS: dict[str, Step] = {
    "state_list": _state_list("job_id"),
    "placement_groups": _state_list("creator_job_id"),
    "actor_table": _actor_table,
    "actor_detail": _actor_detail,
    "events": _events,
    "nodes": _nodes("summary"),
    "node_detail": _nodes("detail"),
}

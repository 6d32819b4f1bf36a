"""The Ray dashboard's views of tasks, actors, workers and events, through the gateway, against real Ray:
a developer sees their own job's traces and nothing of another developer's job (gateway/jobaccess.py)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.support import Cluster

pytestmark = pytest.mark.integration

# A job that leaves traces everywhere the dashboard looks: a named actor, a finished task, its driver.
ENTRYPOINT = (
    'python -c "import ray, time; ray.init(); '
    "Marker = ray.remote(type('RwMarker', (), {{'ping': lambda self: 1}})); "
    "m = Marker.options(name='{actor}', num_cpus=0).remote(); ray.get(m.ping.remote()); "
    "ray.get(ray.remote(lambda: 1).options(name='{task}', num_cpus=0).remote()); time.sleep(900)\""
)


@dataclass
class Traces:
    owner: tuple[str, str]
    stranger: tuple[str, str]
    stranger_name: str
    sid: str
    job_id: str  # Ray's hex job id
    actor_id: str
    actor_name: str
    task_name: str
    node_id: str


def _get(cluster: Cluster, cert: tuple[str, str], path: str) -> requests.Response:
    return requests.get(f"{cluster.url}/dashboard/{path}", cert=cert, verify=cluster.ca, timeout=60)


@pytest.fixture(scope="module")
def traces(cluster: Cluster) -> Iterator[Traces]:
    tag = secrets.token_hex(3)
    owner = cluster.issue(f"scope-owner-{tag}", groups=("developers",))
    stranger_name = f"scope-other-{tag}"
    stranger = cluster.issue(stranger_name, groups=("developers",))
    actor, task, sid = f"rw-marker-{tag}", f"rw_task_{tag}", f"scope-{tag}"
    body = {"entrypoint": ENTRYPOINT.format(actor=actor, task=task), "submission_id": sid}
    resp = requests.post(f"{cluster.url}/api/jobs/", json=body, cert=owner, verify=cluster.ca, timeout=60)
    assert resp.status_code == 200, resp.text
    try:
        found: tuple[str, dict[str, Any]] | None = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and found is None:
            actors = _get(cluster, cluster.admin_cert, "logical/actors").json()["data"]["actors"]
            # The table is keyed by actor id; the record's own "actorId" can be Ray's nil id (its worker's stats).
            found = next(
                ((k, a) for k, a in actors.items() if a.get("name") == actor and a.get("state") == "ALIVE"), None
            )
            tasks = _get(
                cluster,
                cluster.admin_cert,
                f"api/v0/tasks?detail=1&limit=1000&filter_keys=name&filter_predicates=%3D&filter_values={task}",
            ).json()
            if not any(t.get("state") == "FINISHED" for t in tasks["data"]["result"]["result"]):
                found = None
            if found is None:
                time.sleep(1)
        assert found is not None, "the job's actor and task did not show up in the dashboard"
        job = next(j for j in cluster.ray_jobs() if j.get("submission_id") == sid)
        actor_id, record = found
        yield Traces(
            owner, stranger, stranger_name, sid, job["job_id"], actor_id, actor, task, record["address"]["nodeId"]
        )
    finally:
        requests.post(f"{cluster.url}/api/jobs/{sid}/stop", cert=owner, verify=cluster.ca, timeout=60)


def _summary_of(job_id: str) -> str:
    return f"api/v0/tasks/summarize?filter_keys=job_id&filter_predicates=%3D&filter_values={job_id}"


def test_lists_and_details_hide_another_developers_job(cluster: Cluster, traces: Traces) -> None:
    t = traces
    views = [
        "logical/actors",
        f"logical/actors/{t.actor_id}",
        "events",
        "nodes?view=summary",
        f"nodes/{t.node_id}",
        "api/v0/actors?detail=1&limit=1000",
        "api/v0/tasks?detail=1&limit=1000",
    ]
    seen_by_owner = {path: _get(cluster, t.owner, path).text for path in views}
    for path in views:
        stranger = _get(cluster, t.stranger, path)
        assert stranger.status_code == 200, (path, stranger.text)
        for trace in (t.actor_name, t.actor_id, t.task_name, f'"{t.job_id}"'):
            assert trace not in stranger.text, (path, trace)
    # The same views name the job to its owner, so the checks above are not vacuous.
    assert t.actor_name in seen_by_owner["logical/actors"]
    assert t.task_name in seen_by_owner["api/v0/tasks?detail=1&limit=1000"]
    assert t.actor_name in seen_by_owner[f"logical/actors/{t.actor_id}"]
    # Ray fills a node's actor table some seconds after the actor starts: wait until an admin sees it there.
    node_page = f"nodes/{t.node_id}"
    deadline = time.monotonic() + 60
    while t.actor_name not in _get(cluster, cluster.admin_cert, node_page).text and time.monotonic() < deadline:
        time.sleep(2)
    assert t.actor_name in _get(cluster, t.owner, node_page).text
    assert t.actor_name not in _get(cluster, t.stranger, node_page).text
    assert _get(cluster, t.stranger, f"logical/actors/{t.actor_id}").json()["data"]["detail"] is None


def test_answers_about_one_job_are_for_those_who_may_view_it(cluster: Cluster, traces: Traces) -> None:
    t = traces
    start = len(cluster.audit_records())
    scoped = [
        _summary_of(t.job_id),
        f"api/v0/tasks/timeline?download=1&job_id={t.job_id}",
        f"events?job_id={t.job_id}",
        f"api/data/datasets/{t.job_id}",
    ]
    for path in scoped:
        refused = _get(cluster, t.stranger, path)
        assert refused.status_code == 404 and refused.json()["error"] == "no such job", (path, refused.text)
        assert refused.json()["hint"]
    # A job that does not exist reads the same, so the 404 is no existence oracle.
    missing = _get(cluster, t.stranger, _summary_of("7f7f7f7f"))
    assert (missing.status_code, missing.json()["error"]) == (404, "no such job")
    for path in scoped[:3]:
        assert _get(cluster, t.owner, path).status_code == 200, path
    assert t.task_name in _get(cluster, t.owner, _summary_of(t.job_id)).text
    # Each refusal is audited: the request (who, what) and its outcome (404 and the real reason).
    records = cluster.audit_records()[start:]
    requests_by_id = {r["request_id"]: r for r in records if r.get("kind") == "request"}
    refusals = [r for r in records if r.get("kind") == "outcome" and r.get("status") == 404]
    assert len(refusals) == len(scoped) + 1
    for outcome in refusals:
        assert "may not view" in outcome["reason"]
        assert t.stranger_name in str(requests_by_id[outcome["request_id"]]["principal"])


def test_summaries_of_every_job_need_every_job(cluster: Cluster, traces: Traces) -> None:
    t = traces
    for path in ("api/v0/tasks/summarize", "api/v0/tasks/timeline?download=1"):
        refused = _get(cluster, t.stranger, path)
        assert refused.status_code == 403 and "every job" in refused.json()["error"], (path, refused.text)
        assert refused.json()["hint"]
        assert _get(cluster, cluster.admin_cert, path).status_code == 200, path
    viewer = cluster.issue(f"scope-viewer-{secrets.token_hex(3)}", groups=("viewers",))
    assert t.task_name in _get(cluster, viewer, "api/v0/tasks/summarize").text

"""Job id collisions against real Ray (issue 13 §1): the review's request, where bob chose alice's Ray job id
as his submission id and then read her tasks, actors and env values through the dashboard, plus variants.

A submission id that could name another job is refused; a collision made before that refusal existed (here
made directly in Ray, as an older gateway let it through) leaves the ambiguous references viewable only by
those who may view every job they name.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.support import Cluster

pytestmark = pytest.mark.integration
# A job that leaves traces where the dashboard looks: a named actor, a finished task, its env var.
ENTRYPOINT = (
    'python -c "import ray, time; ray.init(); '
    "A = ray.remote(type('RwIdActor', (), {{'ping': lambda self: 1}})); "
    "a = A.options(name='{actor}', num_cpus=0).remote(); ray.get(a.ping.remote()); "
    "ray.get(ray.remote(lambda: 1).options(name='{task}', num_cpus=0).remote()); time.sleep(900)\""
)


@dataclass
class Alice:
    cert: tuple[str, str]
    sid: str
    job_id: str  # Ray's hex job id
    actor: str
    task: str
    secret: str


def _post(cluster: Cluster, cert: tuple[str, str], body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{cluster.url}/api/jobs/", json=body, cert=cert, verify=cluster.ca, timeout=60)


def _get(cluster: Cluster, cert: tuple[str, str], path: str) -> requests.Response:
    return requests.get(f"{cluster.url}/dashboard/{path}", cert=cert, verify=cluster.ca, timeout=60)


def _records(cluster: Cluster, request_id: str) -> list[dict[str, Any]]:
    return [r for r in cluster.audit_records() if r.get("request_id") == request_id]


@pytest.fixture(scope="module")
def alice(cluster: Cluster) -> Iterator[Alice]:
    tag = secrets.token_hex(3)
    cert = cluster.issue(f"ids-alice-{tag}", groups=("developers",))
    actor, task, sid, secret = f"rw-id-actor-{tag}", f"rw_id_task_{tag}", f"Alice-Run-{tag}", f"s3cret-{tag}"
    body = {
        "entrypoint": ENTRYPOINT.format(actor=actor, task=task),
        "submission_id": sid,
        "runtime_env": {"env_vars": {"ALICE_TOKEN": secret}},
    }
    resp = _post(cluster, cert, body)
    assert resp.status_code == 200, resp.text
    try:
        deadline, job = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            job = next((j for j in cluster.ray_jobs() if j.get("submission_id") == sid and j.get("job_id")), None)
            tasks = _get(cluster, cluster.admin_cert, "api/v0/tasks?detail=1&limit=1000").text
            actors = _get(cluster, cluster.admin_cert, "logical/actors").text
            if job is not None and task in tasks and actor in actors:
                break
            time.sleep(1)
        assert job is not None, "alice's job did not start"
        yield Alice(cert, sid, str(job["job_id"]), actor, task, secret)
    finally:
        requests.post(f"{cluster.url}/api/jobs/{sid}/stop", cert=cert, verify=cluster.ca, timeout=60)


def test_the_reviews_submission_is_refused(cluster: Cluster, alice: Alice) -> None:
    bob = cluster.issue(f"ids-bob-{secrets.token_hex(3)}", groups=("developers",))
    jobs_before = len(cluster.ray_jobs())
    for sid in (alice.job_id, alice.job_id.upper(), "0" + alice.job_id[1:]):
        resp = _post(cluster, bob, {"entrypoint": "sleep 1200", "submission_id": sid})
        assert resp.status_code == 400 and "looks like a Ray job id" in resp.json()["error"], resp.text
        records = _records(cluster, resp.json()["request_id"])
        assert [r["kind"] for r in records] == ["request", "outcome"] and records[0]["decision"] == "deny"
    for sid in (alice.sid, alice.sid.lower(), alice.sid.upper()):
        resp = _post(cluster, bob, {"entrypoint": "sleep 1200", "submission_id": sid})
        assert resp.status_code == 409 and "already names a job" in resp.json()["error"], resp.text
    assert len(cluster.ray_jobs()) == jobs_before


def test_resubmitting_an_id_ray_holds_is_a_clear_409(cluster: Cluster, alice: Alice) -> None:
    """The review: Ray answered the second submission with a 500 and a traceback."""
    resp = _post(cluster, alice.cert, {"entrypoint": "sleep 1", "submission_id": alice.sid})
    assert resp.status_code == 409 and resp.json()["hint"] and "Traceback" not in resp.text
    records = _records(cluster, resp.json()["request_id"])
    assert [(r["kind"], r.get("decision"), r.get("status")) for r in records] == [
        ("request", "allow", None),
        ("outcome", None, 409),
    ]


def test_a_collision_made_before_the_refusal_shows_nothing_to_either_developer(cluster: Cluster, alice: Alice) -> None:
    tag = secrets.token_hex(3)
    bob_name = f"ids-bob2-{tag}"
    bob = cluster.issue(bob_name, groups=("developers",))
    # As an older gateway would have let bob do: his submission id is alice's Ray job id.
    owner = f"spiffe://test.raywarden/user/{bob_name}"
    direct = requests.post(
        f"{cluster.dashboard_url()}/api/jobs/",
        json={"entrypoint": "echo collided", "submission_id": alice.job_id, "metadata": {"raywarden.owner": owner}},
        headers={"Authorization": f"Bearer {cluster.ray_token()}"},
        timeout=60,
    )
    assert direct.status_code == 200, direct.text
    # Ray itself resolves the hex id to alice's job first (its stop and delete included): the record of
    # bob's job stays, and with it the ambiguity, for as long as Ray keeps its job records.
    views = ("api/v0/tasks?detail=true&limit=1000", "api/v0/actors?detail=true&limit=1000", "logical/actors")
    for cert in (bob, alice.cert):
        for path in views:
            resp = _get(cluster, cert, path)
            assert resp.status_code == 200, (path, resp.text)
            for trace in (alice.secret, alice.task, alice.actor):
                assert trace not in resp.text, (path, trace)
        for job in (alice.job_id, alice.job_id.upper()):
            assert _get(cluster, cert, f"api/v0/tasks/timeline?job_id={job}").status_code == 404
    # Admins may view both jobs: they still see everything.
    assert alice.task in _get(cluster, cluster.admin_cert, views[0]).text
    # The Jobs API decides each job on its own record: each developer lists their own job only.
    mine = requests.get(f"{cluster.url}/api/jobs/", cert=alice.cert, verify=cluster.ca, timeout=60).json()
    assert alice.sid in json.dumps(mine) and alice.secret in json.dumps(mine)
    # Bob's job carries no owner seal (an older gateway wrote none; here Ray was asked directly): it is nobody's,
    # so bob no longer lists it either (gateway/owner_seal.py).
    theirs = requests.get(f"{cluster.url}/api/jobs/", cert=bob, verify=cluster.ca, timeout=60).json()
    assert theirs == [] and alice.secret not in json.dumps(theirs)

"""Job id collisions (issue 13 §1): a submission id never names a second job, and a reference in a
dashboard answer that could name more than one job is shown only to those who may view all of them."""

from __future__ import annotations

import json

import pytest

from tests.unit.gateway.conftest import Gateway

pytestmark = pytest.mark.unit


def _submit(gateway: Gateway, headers: dict[str, str], **body: object) -> tuple[int, dict[str, object]]:
    resp = gateway.client.post("/api/jobs/", json={"entrypoint": "sleep 1200", **body}, headers=headers)
    return resp.status_code, resp.json()


@pytest.mark.parametrize("sid", ["02000000", "0a000000", "DEADBEEF", "ffffffff", "12", "0123456789abcdef" * 2])
def test_a_submission_id_shaped_like_a_ray_job_id_is_refused(gateway: Gateway, sid: str) -> None:
    """The review's request used alice's hex job id as bob's submission id."""
    gateway.ray.add_job("alice-job", gateway.principal("alice", "developers"))  # Ray job id 01000000
    bob = gateway.bearer("bob", "developers")
    for field in ("submission_id", "job_id"):  # job_id: Ray's deprecated name for the same thing
        status, answer = _submit(gateway, bob, **{field: sid})
        assert status == 400 and "looks like a Ray job id" in str(answer["error"]), answer
        assert "letter" in str(answer["hint"])
        gateway.audited(str(answer["request_id"]), "deny", 400)
    assert gateway.ray.requests("POST") == [] and len(gateway.ray.jobs) == 1


def test_a_submission_id_equal_to_another_jobs_id_ignoring_case_is_refused(gateway: Gateway) -> None:
    gateway.ray.add_job("Alice-Run", gateway.principal("alice", "developers"))
    bob = gateway.bearer("bob", "developers")
    for sid in ("Alice-Run", "alice-run", "ALICE-RUN"):
        status, answer = _submit(gateway, bob, submission_id=sid)
        assert status == 409 and "already names a job" in str(answer["error"]), answer
        assert answer["hint"]
        # Decided (bob may submit), then refused: the outcome record says why.
        record = gateway.audited(str(answer["request_id"]), "allow", 409)
        assert record["action"] == "jobs.submit"
        outcome = gateway.records_of(str(answer["request_id"]))[1]
        assert "ignoring case" in outcome["reason"]
    assert gateway.ray.requests("POST") == []


def test_resubmitting_a_submission_id_ray_holds_is_a_409(gateway: Gateway) -> None:
    """The review: a second submission reusing a submission id Ray already holds gave a 500."""
    alice = gateway.bearer("alice", "developers")
    assert _submit(gateway, alice, submission_id="run-1")[0] == 200
    status, answer = _submit(gateway, alice, submission_id="run-1")
    assert status == 409 and answer["hint"]
    assert len(gateway.ray.requests("POST", "/api/jobs/")) == 1


def test_rays_own_duplicate_refusal_reads_as_a_409(gateway: Gateway) -> None:
    """Should another gateway process win the race for an id, Ray's 500 with a traceback becomes a 409."""
    gateway.ray.add_job("raced", gateway.principal("alice", "developers"))
    gateway.ray.unlisted.add("raced")  # submitted between this gateway's check and its forward
    status, answer = _submit(gateway, gateway.bearer("bob", "developers"), submission_id="raced")
    assert status == 409 and "Traceback" not in json.dumps(answer)
    gateway.audited(str(answer["request_id"]), "allow", 409)


def test_a_reference_that_names_two_jobs_is_shown_only_to_who_may_view_both(gateway: Gateway) -> None:
    """A collision made before the refusal existed (bob's submission id is alice's Ray job id)."""
    secret = {"env_vars": {"TOKEN": "alice-secret"}}
    alice_job = gateway.ray.add_job("alice-job", gateway.principal("alice", "developers"), runtime_env=secret)
    gateway.ray.add_job(alice_job["job_id"], gateway.principal("bob", "developers"))
    bob, alice = gateway.bearer("bob"), gateway.bearer("alice")
    for path in (
        "/dashboard/api/v0/tasks?detail=true",
        "/dashboard/api/v0/actors?detail=true",
        "/dashboard/logical/actors",
        "/dashboard/events",
    ):
        for headers in (bob, alice):
            resp = gateway.client.get(path, headers=headers)
            assert resp.status_code == 200, (path, resp.text)
            assert "alice-secret" not in resp.text and "of_alice-job" not in resp.text, path
    timeline = f"/dashboard/api/v0/tasks/timeline?job_id={alice_job['job_id']}"
    for headers in (bob, alice):
        assert gateway.client.get(timeline, headers=headers).status_code == 404
    # Admins may view both jobs: nothing is hidden from them.
    admin = gateway.bearer("admin")
    assert "alice-secret" in gateway.client.get("/dashboard/api/v0/tasks?detail=true", headers=admin).text
    assert gateway.client.get(timeline, headers=admin).status_code == 200
    # The Jobs API decides each row on its own record: each owner still lists their own job.
    mine = gateway.client.get("/api/jobs/", headers=alice).json()
    assert [j["submission_id"] for j in mine] == ["alice-job"] and "alice-secret" in json.dumps(mine)
    theirs = gateway.client.get("/api/jobs/", headers=bob).json()
    assert [j["submission_id"] for j in theirs] == [alice_job["job_id"]]


def test_job_references_are_compared_ignoring_case(gateway: Gateway) -> None:
    """Ray's state API compares job ids ignoring case; so does the gateway's scope check."""
    job = gateway.ray.add_job("alice-job", gateway.principal("alice", "developers"), job_id="0a000000")
    bob = gateway.bearer("bob", "developers")
    upper = job["job_id"].upper()
    for query in (f"job_id={upper}", f"job_id={job['job_id']}"):
        assert gateway.client.get(f"/dashboard/api/v0/tasks/timeline?{query}", headers=bob).status_code == 404
    filters = f"filter_keys=JOB_ID&filter_predicates=%3D&filter_values={upper}"
    assert gateway.client.get(f"/dashboard/api/v0/tasks/summarize?{filters}", headers=bob).status_code in (403, 404)

"""The gateway records before it forwards: the decision is durable when Ray first sees the request, every
request gets its records, and a log that cannot be written stops the gateway serving anything."""

from __future__ import annotations

import pytest

from tests.unit.gateway.conftest import Gateway

pytestmark = pytest.mark.unit


def _kinds(records: list[dict[str, object]]) -> list[object]:
    return [r.get("kind") for r in records]


def test_the_decision_is_on_disk_before_ray_sees_the_request(gateway: Gateway) -> None:
    alice = gateway.bearer("alice", "developers")
    resp = gateway.client.post("/api/jobs/", json={"entrypoint": "echo hi", "submission_id": "first"}, headers=alice)
    assert resp.status_code == 200, resp.text
    rid = resp.headers["x-request-id"]
    (submit,) = gateway.ray.requests("POST", "/api/jobs/")
    at_arrival = [r for r in submit.probe if r.get("request_id") == rid]
    # At the moment Ray received the submission, the allow was durable and the outcome not yet written.
    assert _kinds(at_arrival) == ["request"]
    assert at_arrival[0]["decision"] == "allow" and at_arrival[0]["action"] == "jobs.submit"
    # Afterwards: exactly one decision record and one outcome record.
    records = gateway.records_of(rid)
    assert _kinds(records) == ["request", "outcome"] and records[1]["status"] == 200


def test_forwarded_reads_have_one_decision_and_one_outcome(gateway: Gateway) -> None:
    admin = gateway.bearer("admin")
    for path in ("/api/version", "/api/jobs/", "/dashboard/api/v0/tasks?limit=10", "/dashboard/events"):
        resp = gateway.client.get(path, headers=admin)
        assert resp.status_code == 200, (path, resp.text)
        records = gateway.records_of(resp.headers["x-request-id"])
        assert _kinds(records) == ["request", "outcome"], path
        assert records[0]["decision"] == "allow" and records[1]["status"] == 200


def test_a_failed_audit_log_refuses_everything_and_forwards_nothing(gateway: Gateway) -> None:
    admin = gateway.bearer("admin")
    gateway.app.audit.close()  # a closed log refuses every append, as a full or read-only disk does
    before = len(gateway.ray.received)
    for method, path, body in (
        ("GET", "/api/version", None),
        ("POST", "/api/jobs/", {"entrypoint": "echo never"}),
        ("GET", "/dashboard/api/v0/tasks", None),
        ("GET", "/no/such/route", None),
    ):
        resp = gateway.client.request(method, path, json=body, headers=admin)
        assert resp.status_code == 503, (path, resp.text)
        assert "audit log unavailable" in resp.json()["error"] and resp.json()["hint"]
    assert gateway.ray.received[before:] == []
    anonymous = gateway.client.get("/raywarden/v1/ca")
    assert anonymous.status_code == 503

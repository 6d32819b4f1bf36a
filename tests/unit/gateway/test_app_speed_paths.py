"""The paths that make the gateway fast, offline: W3C trace context, the job records cache and its
invalidation on deletes, and the cap on answers the gateway must read whole."""

from __future__ import annotations

import pytest

from raywarden.gateway.jobrecords import JobDeletions, JobRecords
from raywarden.gateway.trace import parse_traceparent
from tests.unit.gateway.conftest import Gateway, spiffe

pytestmark = pytest.mark.unit

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (f"00-{TRACE}-{PARENT}-01", True),
        (f"01-{TRACE}-{PARENT}-01-extra", True),  # a later version: its first four fields count
        (f"00-{TRACE}-{PARENT}-01-extra", False),  # version 00 has exactly four fields
        (f"ff-{TRACE}-{PARENT}-01", False),
        (f"00-{TRACE.upper()}-{PARENT}-01", False),
        (f"00-{'0' * 32}-{PARENT}-01", False),
        (f"00-{TRACE}-{'0' * 16}-01", False),
        (f"00-{TRACE}-{PARENT}", False),
        ("", False),
        ("00-" + "a" * 5000, False),
    ],
)
def test_traceparent_grammar(value: str, valid: bool) -> None:
    assert (parse_traceparent(value) is not None) is valid


def test_the_trace_reaches_ray_and_both_records(gateway: Gateway) -> None:
    admin = gateway.bearer("admin")
    resp = gateway.client.get("/api/version", headers={**admin, "traceparent": f"00-{TRACE}-{PARENT}-03"})
    assert resp.status_code == 200
    (received,) = gateway.ray.requests("GET", "/api/version")
    version, trace, span, flags = received.headers["traceparent"].split("-")
    assert (version, trace, flags) == ("00", TRACE, "01")  # only the sampled bit is passed on
    assert span != PARENT  # the gateway's own span is Ray's parent
    records = gateway.records_of(resp.headers["x-request-id"])
    assert [r["kind"] for r in records] == ["request", "outcome"]
    assert all(r["trace_id"] == TRACE and r["parent_span_id"] == PARENT and r["span_id"] == span for r in records)


def test_two_traceparent_headers_start_a_new_trace(gateway: Gateway) -> None:
    admin = gateway.bearer("admin")
    scope_headers = [("traceparent", f"00-{TRACE}-{PARENT}-01"), ("traceparent", f"00-{TRACE}-{PARENT}-00")]
    resp = gateway.client.get("/api/version", headers=[*admin.items(), *scope_headers])
    records = gateway.records_of(resp.headers["x-request-id"])
    assert records[0]["trace_id"] != TRACE and "parent_span_id" not in records[0]


def test_a_job_record_is_fetched_once_and_forgotten_on_delete(gateway: Gateway) -> None:
    alice = gateway.bearer("alice", "developers")
    gateway.ray.add_job("run-one", spiffe("alice"))
    for _ in range(3):
        assert gateway.client.get("/api/jobs/run-one", headers=alice).status_code == 200
    # Three reads: Ray was asked for the record once (for the decision) and for the answer each time.
    assert len(gateway.ray.requests("GET", "/api/jobs/run-one")) == 4
    assert gateway.client.delete("/api/jobs/run-one", headers=alice).status_code == 200
    # The id now names a job of someone else: no cached owner may decide on it.
    gateway.ray.add_job("run-one", spiffe("mallory"))
    resp = gateway.client.get("/api/jobs/run-one", headers=alice)
    assert resp.status_code == 404, resp.text


def test_a_deletion_by_another_worker_is_seen(gateway: Gateway) -> None:
    alice = gateway.bearer("alice", "developers")
    gateway.ray.add_job("run-two", spiffe("alice"))
    assert gateway.client.get("/api/jobs/run-two", headers=alice).status_code == 200
    # Another worker deleted it (its deletion log is shared through the run dir); Ray reused the id.
    other = JobRecords(gateway.app.upstream, JobDeletions(gateway.state.run_dir / "job-deletions.log"))
    other.deleting(["run-two"])
    gateway.ray.jobs = [j for j in gateway.ray.jobs if j["submission_id"] != "run-two"]
    gateway.ray.add_job("run-two", spiffe("mallory"))
    assert gateway.client.get("/api/jobs/run-two", headers=alice).status_code == 404


def test_an_answer_naming_another_owner_is_refused_and_forgotten(gateway: Gateway) -> None:
    alice = gateway.bearer("alice", "developers")
    job = gateway.ray.add_job("run-three", spiffe("alice"))
    assert gateway.client.get("/api/jobs/run-three", headers=alice).status_code == 200
    job["metadata"]["raywarden.owner"] = spiffe("mallory")  # changed behind the gateway's back
    resp = gateway.client.get("/api/jobs/run-three", headers=alice)
    assert resp.status_code == 502 and resp.json()["hint"]
    assert gateway.client.get("/api/jobs/run-three", headers=alice).status_code == 404


def test_a_filtered_answer_over_the_cap_is_a_502_with_a_hint(gateway: Gateway) -> None:
    admin = gateway.bearer("admin")
    gateway.app.services = gateway.app.services.__class__(
        **{**gateway.app.services.__dict__, "max_filtered_bytes": 1024}
    )
    for handler in gateway.app.handlers.values():
        handler.services = gateway.app.services  # type: ignore[attr-defined]
    for i in range(40):
        gateway.ray.add_job(f"run-{i}", spiffe("admin"), entrypoint="x" * 100)
    resp = gateway.client.get("/api/jobs/", headers=admin)
    assert resp.status_code == 502
    assert "too large" in resp.json()["error"] and "max_filtered_answer_bytes" in resp.json()["hint"]
    assert gateway.audited(resp.headers["x-request-id"], "allow", 502)


def test_another_workers_failed_audit_log_fails_this_one(gateway: Gateway) -> None:
    admin = gateway.bearer("admin")
    assert gateway.client.get("/api/version", headers=admin).status_code == 200
    before = len(gateway.ray.received)
    gateway.app.audit.fail("cannot write audit-000000000000.jsonl: No space left on device")  # type: ignore[attr-defined]
    resp = gateway.client.get("/api/version", headers=admin)
    assert resp.status_code == 503 and "audit log unavailable" in resp.json()["error"]
    assert gateway.ray.received[before:] == []  # nothing forwarded unrecorded

"""The gateway and Ray read one query (issue 13 §2), against real Ray: the review's two requests (a repeated
job_id, and a literal '#' that Ray's client cut the query at), their variants, and what Ray answers when the
gateway forwards the query it checked."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.support import Cluster, raw_https

pytestmark = pytest.mark.integration


@dataclass
class Two:
    alice: tuple[str, str]
    bob: tuple[str, str]
    alice_job: str  # Ray's hex job ids
    bob_job: str


def _submit(cluster: Cluster, cert: tuple[str, str], sid: str) -> None:
    body = {
        "entrypoint": 'python -c "import ray; ray.init(); ray.get(ray.remote(lambda: 1).remote())"',
        "submission_id": sid,
    }
    resp = requests.post(f"{cluster.url}/api/jobs/", json=body, cert=cert, verify=cluster.ca, timeout=60)
    assert resp.status_code == 200, resp.text


def _job_id(cluster: Cluster, sid: str) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = next((j for j in cluster.ray_jobs() if j.get("submission_id") == sid), None)
        if job is not None and job.get("job_id") and job.get("status") in ("SUCCEEDED", "FAILED"):
            return str(job["job_id"])
        time.sleep(1)
    raise AssertionError(f"job {sid} did not finish")


@pytest.fixture(scope="module")
def two(cluster: Cluster) -> Iterator[Two]:
    tag = secrets.token_hex(3)
    alice = cluster.issue(f"q-alice-{tag}", groups=("developers",))
    bob = cluster.issue(f"q-bob-{tag}", groups=("developers",))
    _submit(cluster, alice, f"q-alice-{tag}")
    _submit(cluster, bob, f"q-bob-{tag}")
    yield Two(alice, bob, _job_id(cluster, f"q-alice-{tag}"), _job_id(cluster, f"q-bob-{tag}"))


def _records(cluster: Cluster, request_id: str) -> list[dict[str, Any]]:
    return [r for r in cluster.audit_records() if r.get("request_id") == request_id]


def _refused(cluster: Cluster, status: int, body: bytes) -> dict[str, Any]:
    answer = json.loads(body)
    assert status == 400 and answer["hint"], answer
    records = _records(cluster, answer["request_id"])
    assert [(r["kind"], r.get("decision"), r.get("status")) for r in records] == [
        ("request", "deny", 400),
        ("outcome", None, 400),
    ]
    return records[0]


def test_a_repeated_job_id_is_refused(cluster: Cluster, two: Two) -> None:
    for query in (
        f"job_id={two.alice_job}&job_id={two.bob_job}",
        f"job_id={two.bob_job}&job_id={two.alice_job}",
        f"download=1&job_id={two.bob_job}&download=1",
    ):
        status, _, body = raw_https(cluster, "GET", f"/dashboard/api/v0/tasks/timeline?{query}", cert=two.bob)
        record = _refused(cluster, status, body)
        assert "more than once" in json.loads(body)["error"] and record["raw_query"] == query


def test_a_literal_hash_is_refused(cluster: Cluster, two: Two) -> None:
    mine = f"filter_keys=job_id&filter_predicates=%3D&filter_values={two.bob_job}"
    for target in (
        f"/dashboard/api/v0/tasks/summarize?timeout=30#&{mine}",
        f"/dashboard/api/v0/tasks/summarize?{mine}#",
        f"/dashboard/api/v0/tasks?{mine}#&detail=1",
    ):
        status, headers, body = raw_https(cluster, "GET", target, cert=two.bob)
        if status == 400:  # h11 hands the app the whole target: the gateway refuses the '#'
            record = _refused(cluster, status, body)
            assert "'#'" in json.loads(body)["error"] and "#" in record["raw_query"]
            continue
        # httptools drops the fragment before the app: nothing after '#' is decided on or forwarded.
        request_id = {k.lower(): v for k, v in headers.items()}["x-request-id"]
        [record] = [r for r in _records(cluster, request_id) if r["kind"] == "request"]
        after = target.split("#", 1)[1]
        decided = str(record.get("raw_query") or record.get("query") or "")
        assert "#" not in decided and (not after or after not in decided), record


def test_ray_answers_the_query_that_was_checked(cluster: Cluster, two: Two) -> None:
    """Bob's own summary works, and the audit record holds the canonical query Ray received."""
    query = f"filter_keys=job_id&filter_predicates=%3d&filter_values={two.bob_job}&timeout=30"
    status, headers, body = raw_https(cluster, "GET", f"/dashboard/api/v0/tasks/summarize?{query}", cert=two.bob)
    assert status == 200, body
    (record,) = [r for r in _records(cluster, headers["x-request-id"]) if r["kind"] == "request"]
    assert record["query"] == f"filter_keys=job_id&filter_predicates=%3D&filter_values={two.bob_job}&timeout=30"
    # Ray compares job ids ignoring case, and so does the gateway: alice's job in capitals is still hers.
    for job in (two.alice_job, two.alice_job.upper()):
        other = f"filter_keys=job_id&filter_predicates=%3D&filter_values={job}"
        status, _, _ = raw_https(cluster, "GET", f"/dashboard/api/v0/tasks/summarize?{other}", cert=two.bob)
        assert status == 404


@pytest.mark.parametrize(
    "query",
    ["job_id=%zz", "job_id=%ff%fe", "job_id=%0a", "job_id=%00", "job_id=a&job%5Fid=b", "JOB_ID=x"],
)
def test_ambiguous_encodings_are_refused(cluster: Cluster, two: Two, query: str) -> None:
    status, _, body = raw_https(cluster, "GET", f"/dashboard/events?{query}", cert=two.bob)
    _refused(cluster, status, body)

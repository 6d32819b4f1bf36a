"""Bad input against the real gateway and Ray (issue 13 §4): each of the review's requests that gave an
unaudited 500 is now a 400 with a hint, with one decision record and one outcome record, and leaves nothing
behind in Ray or the identity store."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest

from tests.support import Cluster, raw_https

pytestmark = pytest.mark.integration
DEEP = b"[" * 100_000 + b"]" * 100_000
CONTROL_DEEP = b"[" * 30_000 + b"]" * 30_000  # control bodies are at most 64 KiB


def _rows(cluster: Cluster) -> dict[str, int]:
    db = sqlite3.connect(cluster.state.identity_db)
    try:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        # failed_attempts: refused attempts are counted there, on purpose
        return {t: db.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables if t != "failed_attempts"}  # noqa: S608
    finally:
        db.close()


def _audited_400(cluster: Cluster, status: int, body: bytes) -> dict[str, Any]:
    answer = json.loads(body)
    assert status == 400 and answer["hint"], (status, body[:300])
    records = [r for r in cluster.audit_records() if r.get("request_id") == answer["request_id"]]
    assert [(r["kind"], r.get("decision"), r.get("status")) for r in records] == [
        ("request", "deny", 400),
        ("outcome", None, 400),
    ], records
    return answer


@pytest.mark.parametrize(
    "body",
    [
        b'{"entrypoint": "sleep 1", "entrypoint_num_cpus": 1e400}',
        b'{"entrypoint": "sleep 1", "entrypoint_num_cpus": 1' + b"0" * 400 + b"}",
        b'{"entrypoint": "sleep 1", "entrypoint_memory": ' + b"7" * 5000 + b"}",
        b'{"entrypoint": "sleep 1", "runtime_env": ' + DEEP + b"}",
        DEEP,
    ],
    ids=["1e400", "10^400", "5000 digits", "nested runtime_env", "nested body"],
)
def test_job_bodies(cluster: Cluster, body: bytes) -> None:
    jobs_before = len(cluster.ray_jobs())
    headers = {"Content-Type": "application/json"}
    status, _, answer = raw_https(cluster, "POST", "/api/jobs/", body=body, headers=headers, cert=cluster.admin_cert)
    assert json.loads(answer)["error"].startswith("invalid job submission")
    _audited_400(cluster, status, answer)
    assert len(cluster.ray_jobs()) == jobs_before


def test_control_bodies(cluster: Cluster) -> None:
    rows = _rows(cluster)
    headers = {"Content-Type": "application/json"}
    status, _, answer = raw_https(cluster, "POST", "/raywarden/v1/enroll", body=CONTROL_DEEP, headers=headers)
    _audited_400(cluster, status, answer)
    # The token route: once the allow was recorded and then the handler crashed, with no outcome.
    for body in (CONTROL_DEEP, b'{"ttl_seconds": 1e999}', b'{"ttl_seconds": ' + b"9" * 5000 + b"}"):
        status, _, answer = raw_https(
            cluster, "POST", "/raywarden/v1/token", body=body, headers=headers, cert=cluster.admin_cert
        )
        _audited_400(cluster, status, answer)
    assert _rows(cluster) == rows


@pytest.mark.parametrize("path", ["/dashboard/api/v0/logs/file", "/ui/signin", "/ui/oidc/start"])
def test_more_than_sixteen_query_parameters(cluster: Cluster, path: str) -> None:
    for query in ("&".join(["lines=1"] * 17), "&".join(f"p{i}=1" for i in range(17)), "&".join(["a=1"] * 70)):
        status, _, answer = raw_https(cluster, "GET", f"{path}?{query}", cert=cluster.admin_cert)
        _audited_400(cluster, status, answer)

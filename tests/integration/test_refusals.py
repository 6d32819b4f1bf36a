"""Refusals of the CLI and the gateway: a clear message, a non-zero exit or 4xx, and nothing changed."""

from __future__ import annotations

import hashlib
import http.client
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from raywarden.cluster import runstate
from raywarden.cluster.procs import pids_mentioning
from raywarden.gateway.routes import CONTROL_JSON_LIMIT
from raywarden.state import StateDir
from tests.support import Cluster, run_cli, tls_context

pytestmark = pytest.mark.integration


# What a running cluster itself writes while a test runs: its audit log, run files, logs and identity.db (sessions,
# limiters, last uses). Everything else in a state dir (config, keys, certificates, policies) is what `init` makes.
_LIVE = ("audit", "run", "logs")


def _digest(folder: Path) -> str:
    """A fingerprint of every file under ``folder`` (names and bytes) but the live ones: proves nothing was
    rewritten."""
    h = hashlib.sha256()
    for path in sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not set(p.relative_to(folder).parts) & set(_LIVE) and not p.name.startswith("identity.db")
    ):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _identity_rows(cluster: Cluster) -> dict[str, int]:
    db = sqlite3.connect(cluster.state.identity_db)
    try:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: db.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}  # noqa: S608
    finally:
        db.close()


def _record(cluster: Cluster, request_id: str) -> dict[str, object]:
    return next(r for r in cluster.audit_records() if r.get("request_id") == request_id)


# -- CLI ------------------------------------------------------------------------------------------


def test_init_over_an_existing_cluster_is_refused(cluster: Cluster) -> None:
    before, principals_before = _digest(cluster.state.root), _identity_rows(cluster)["principals"]
    result = run_cli(cluster, "init", "--state-dir", str(cluster.state.root), "--profile", "another")
    assert result.returncode != 0
    assert "already holds a raywarden cluster" in result.stderr and "hint:" in result.stderr
    assert _digest(cluster.state.root) == before
    assert _identity_rows(cluster)["principals"] == principals_before
    assert not (cluster.home / "profiles" / "another").exists()


def test_init_with_a_profile_name_in_use_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    fresh = tmp_path / "state"
    profile_before = _digest(cluster.profile_dir)
    result = run_cli(cluster, "init", "--state-dir", str(fresh), "--profile", cluster.profile)
    assert result.returncode != 0
    assert "already exists" in result.stderr and "--profile" in result.stderr
    assert not StateDir(fresh).exists()
    assert _digest(cluster.profile_dir) == profile_before


def test_up_twice_is_refused(cluster: Cluster) -> None:
    run_before = runstate.read_run_state(cluster.state)
    result = run_cli(cluster, "up")
    assert result.returncode != 0
    assert "is already up" in result.stderr and "raywarden down" in result.stderr
    assert runstate.read_run_state(cluster.state) == run_before


def test_up_on_a_taken_port_starts_nothing(cluster: Cluster, tmp_path: Path) -> None:
    # The second cluster is another operator's, with a home of its own: its `init` makes its profile the
    # current one, which in the shared home would point every later test's CLI at the wrong CA.
    fresh = StateDir(tmp_path / "state")
    other = replace(cluster, home=tmp_path / "home")
    taken = cluster.url.removeprefix("https://")
    created = run_cli(other, "init", "--state-dir", str(fresh.root), "--profile", "taken-port", "--listen", taken)
    assert created.returncode == 0, created.stderr
    result = run_cli(other, "up", "--state-dir", str(fresh.root))
    assert result.returncode != 0
    assert "cannot listen on" in result.stderr and "--listen" in result.stderr
    assert runstate.read_run_state(fresh) is None
    assert not pids_mentioning(str(fresh.ray_temp_dir))


def test_working_dir_that_is_not_a_folder_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    jobs_before = len(cluster.ray_jobs())
    result = run_cli(cluster, "job", "submit", "--working-dir", str(tmp_path / "missing"), "--", "echo", "x")
    assert result.returncode == 2 and "no such folder" in result.stderr
    assert len(cluster.ray_jobs()) == jobs_before


# -- gateway --------------------------------------------------------------------------------------


def _raw(
    cluster: Cluster, method: str, target: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str]]:
    host, port = cluster.url.removeprefix("https://").split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=tls_context(cluster, cluster.admin_cert), timeout=30)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None and "Content-Length" not in (headers or {}):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("method", "target", "body", "status", "message"),
    [
        ("GET", "/api/version", b"smuggled", 400, "this route takes no request body"),
        ("GET", "/api/jobs/%252e%252e/version", None, 400, "malformed request path"),
        ("GET", "/api/jobs/a%5cb", None, 400, "malformed request path"),
        ("GET", "/api/v0/logs/file", None, 404, "no such route"),
        ("POST", "/api/jobs/x/restart", b"", 404, "no such route"),
    ],
)
def test_gateway_refusals_name_the_problem(
    cluster: Cluster, method: str, target: str, body: bytes | None, status: int, message: str
) -> None:
    jobs_before = len(cluster.ray_jobs())
    got, error = _raw(cluster, method, target, body)
    assert got == status and error["error"] == message
    record = _record(cluster, error["request_id"])
    assert record["decision"] == "deny" and record["status"] == status
    assert len(cluster.ray_jobs()) == jobs_before


def test_control_api_bodies_are_small(cluster: Cluster) -> None:
    """Anonymous control routes (enrollment, join) take CSRs and codes, never package-sized bodies."""
    rows_before = _identity_rows(cluster)
    status, error = _raw(
        cluster,
        "POST",
        "/raywarden/v1/enroll",
        None,
        {"Content-Type": "application/json", "Content-Length": str(CONTROL_JSON_LIMIT + 1)},
    )
    assert status == 413 and error["error"] == f"request body larger than {CONTROL_JSON_LIMIT} bytes"
    assert _record(cluster, error["request_id"])["decision"] == "deny"

    def chunks() -> Iterator[bytes]:
        for _ in range(CONTROL_JSON_LIMIT // 4096 + 2):
            yield b" " * 4096

    resp = requests.post(
        cluster.url + "/raywarden/v1/nodes/join",
        data=chunks(),
        verify=cluster.ca,
        timeout=30,
        headers={"Content-Type": "application/json"},
    )
    assert resp.status_code == 413
    assert _record(cluster, resp.json()["request_id"])["status"] == 413
    assert _identity_rows(cluster) == rows_before

"""doctor against the shared running cluster: every check passes, including those that need it running."""

from __future__ import annotations

import json

import pytest

from tests.support import Cluster, run_cli

pytestmark = pytest.mark.integration

RUNNING_CHECKS = (
    "listeners.ray",
    "listeners.gateway",
    "ray.processes",
    "ray.version",
    "ray.auth",
    "ray.tls",
    "policy.loaded",
    "files.ray-temp",
)


def test_healthy_running_cluster_passes(cluster: Cluster) -> None:
    result = run_cli(cluster, "doctor", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["cluster_running"] and report["summary"]["fail"] == 0
    checks = {c["id"]: c for c in report["checks"]}
    for check_id in RUNNING_CHECKS:
        assert checks[check_id]["status"] == "pass", checks[check_id]
    assert checks["ray.version"]["details"]["version"].startswith("2.")
    assert "gateway's 401" in checks["listeners.gateway"]["message"]
    # Ray makes its own temp dir 0777; the folder raywarden keeps around it is what keeps others out.
    assert (cluster.state.ray_temp_dir.parent.stat().st_mode & 0o777) == 0o700


def test_table_output_names_every_check(cluster: Cluster) -> None:
    result = run_cli(cluster, "doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    for check_id in ("files.keys", "certs.gateway", "listeners.ray", "ray.auth", "audit.verify", "clock.sanity"):
        assert check_id in result.stdout
    assert "OK:" in result.stdout

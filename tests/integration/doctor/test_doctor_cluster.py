"""doctor against the shared running cluster: every check passes, including those that need it running."""

from __future__ import annotations

import json
import os
import stat

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
# As root, Ray runs as a user of its own: these check that split on the running cluster.
SEPARATION_CHECKS = (
    "separation.mode",
    "separation.ray-folder",
    "separation.reach",
    "separation.processes",
    "separation.firewall",
)


def test_healthy_running_cluster_passes(cluster: Cluster) -> None:
    result = run_cli(cluster, "doctor", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["cluster_running"] and report["summary"]["fail"] == 0
    checks = {c["id"]: c for c in report["checks"]}
    for check_id in RUNNING_CHECKS:
        assert checks[check_id]["status"] == "pass", checks[check_id]
    if os.geteuid() == 0:
        for check_id in SEPARATION_CHECKS:
            assert checks[check_id]["status"] == "pass", checks[check_id]
        assert "raywarden-ray" in checks["separation.processes"]["message"]
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


@pytest.mark.skipif(os.geteuid() != 0, reason="Ray runs as a user of its own only when started as root")
def test_an_opened_ray_folder_fails_the_separation_checks(cluster: Cluster) -> None:
    """doctor only reads; the breakage is made here, by hand, and undone."""
    session = (cluster.state.ray_temp_dir / "session_latest").resolve()
    sockets = session / "sockets"
    before = stat.S_IMODE(sockets.stat().st_mode)
    os.chmod(sockets, 0o777)  # noqa: S103 - what Ray would do to it, were it still its own
    try:
        result = run_cli(cluster, "doctor", "--json")
        checks = {c["id"]: c for c in json.loads(result.stdout)["checks"]}
        assert result.returncode == 1
        assert checks["separation.ray-folder"]["status"] == "fail"
        assert f"{sockets} is writable by everyone" in checks["separation.ray-folder"]["message"]
    finally:
        os.chmod(sockets, before)
    state_key = cluster.state.internal_ca_key
    mode = stat.S_IMODE(state_key.stat().st_mode)
    parents = [(p, stat.S_IMODE(p.stat().st_mode)) for p in (cluster.state.root, cluster.state.pki_dir, cluster.root)]
    try:
        for folder, _ in parents:
            os.chmod(folder, 0o755)  # noqa: S103 - the misconfiguration under test
        os.chmod(state_key, 0o644)
        checks = {c["id"]: c for c in json.loads(run_cli(cluster, "doctor", "--json").stdout)["checks"]}
        assert checks["separation.reach"]["status"] == "fail"
        assert str(state_key) in checks["separation.reach"]["message"]
    finally:
        os.chmod(state_key, mode)
        for folder, folder_mode in parents:
            os.chmod(folder, folder_mode)

"""up/down/status: loopback-only Ray, two clusters side by side, nothing left after down, 503 when Ray is gone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import requests

from raywarden.cluster import report, runstate
from raywarden.cluster.procs import alive, is_loopback, pids_mentioning, tcp_listeners
from tests.conftest import free_port
from tests.support import Cluster, run_cli, start_cluster, stop_cluster

pytestmark = pytest.mark.integration


def test_ray_listens_on_loopback_or_is_firewalled(cluster: Cluster) -> None:
    listeners = runstate.ray_listeners(cluster.state)
    assert listeners, "found no Ray listeners at all"
    exposed = {p: a for p, a in listeners.items() if not is_loopback(a)}
    run = runstate.read_run_state(cluster.state)
    assert run is not None
    if exposed:
        assert run.firewall == "installed", f"Ray ports exposed without firewall: {exposed}"


# Connects to each port given on the command line; prints one line per port: "PORT open" or "PORT refused".
_PROBE = """import socket, sys
for port in sys.argv[1:]:
    try:
        socket.create_connection(("127.0.0.1", int(port)), timeout=5).close()
        print(port, "open")
    except OSError:
        print(port, "refused")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the local-user rule is installed with the firewall, as root")
def test_other_local_users_cannot_reach_rays_ports(cluster: Cluster) -> None:
    run = runstate.read_run_state(cluster.state)
    assert run is not None and run.firewall == "installed"
    listening = runstate.ray_listeners(cluster.state)
    ray_ports = [str(p) for p in (run.ports.dashboard, run.ports.gcs, *run.ports.metrics()) if p in listening]
    assert len(ray_ports) >= 3, f"too few of Ray's ports listen to make the test meaningful: {ray_ports}"
    gateway = str(run.listen.port)

    def probe(*prefix: str) -> list[str]:
        # The system Python: the test's own interpreter may live where `nobody` cannot read.
        found = subprocess.run(
            [*prefix, "/usr/bin/python3", "-c", _PROBE, *ray_ports, gateway],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return found.stdout.split()

    # The gateway is for everyone; Ray's ports only for Ray's user and the control plane's.
    assert probe("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups") == [
        w for p in ray_ports for w in (p, "refused")
    ] + [gateway, "open"]
    owner = probe()
    assert owner == [w for p in [*ray_ports, gateway] for w in (p, "open")], owner
    ray_user = cluster.state.load_config().ray_user
    assert ray_user
    as_ray = probe("setpriv", f"--reuid={ray_user}", f"--regid={ray_user}", "--clear-groups")
    assert as_ray == owner, as_ray


def test_status_reports_health_and_fingerprints(cluster: Cluster) -> None:
    info = json.loads(run_cli(cluster, "status", "--json", check=True).stdout)
    assert info["gateway"]["healthy"] and info["ray"]["healthy"]
    assert len(info["fingerprints"]["access_ca"]) == 64
    assert "BEGIN PUBLIC KEY" in info["audit_public_key"]
    assert info["gateway_url"] == cluster.url


def test_second_cluster_is_independent_and_down_leaves_nothing() -> None:
    root = Path(tempfile.mkdtemp(prefix="rwt2-"))
    try:
        second = start_cluster(root, port=free_port(), profile="second")
        run = runstate.read_run_state(second.state)
        assert run is not None
        ports = set(run.ports.all_fixed()) | {run.listen.port}
        result = run_cli(second, "job", "submit", "--", "python", "-c", "print('from the second cluster')")
        assert result.returncode == 0 and "from the second cluster" in result.stdout

        # Ray gone behind a running gateway: a clear 503, never a hang or a pass-through.
        from raywarden.cluster.ray_head import stop_head

        stop_head(second.state, run.ray_pid)
        resp = requests.get(second.url + "/api/jobs/", cert=second.admin_cert, verify=second.ca, timeout=30)
        assert resp.status_code == 503 and "Ray is not reachable" in resp.json()["error"]

        stop_cluster(root)
        assert not pids_mentioning(str(second.state.ray_temp_dir))
        assert not alive(run.gateway_pid)
        listening = tcp_listeners()
        assert not ports & set(listening), f"still listening after down: {ports & set(listening)}"
    finally:
        stop_cluster(root)
        shutil.rmtree(root, ignore_errors=True)


def test_first_cluster_still_healthy_after_the_second_went_down(cluster: Cluster) -> None:
    info = report.status(cluster.state)
    assert info["gateway"]["healthy"] and info["ray"]["healthy"]

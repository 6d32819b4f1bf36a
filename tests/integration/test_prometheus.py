"""The cluster's Prometheus: loopback only, private files, scrapes Ray, used by Ray's dashboard, gone after down."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from raywarden.cluster import lifecycle, prometheus, report, runstate
from raywarden.cluster.procs import alive, cmdline, listening_ports, pids_mentioning, tcp_listeners
from raywarden.config import ClusterConfig
from raywarden.errors import ClusterError
from raywarden.state import StateDir
from tests.conftest import free_port
from tests.support import Cluster, start_cluster, stop_cluster

pytestmark = pytest.mark.integration


def _run(cluster: Cluster) -> runstate.RunState:
    run = runstate.read_run_state(cluster.state)
    assert run is not None and run.prometheus_pid is not None and run.prometheus_port is not None, run
    return run


def _prom(cluster: Cluster, path: str, **params: str) -> Any:
    resp = requests.get(f"{prometheus.url(_run(cluster).prometheus_port or 0)}{path}", params=params, timeout=10)
    resp.raise_for_status()
    return resp.json()["data"]


def test_prometheus_listens_on_loopback_only_with_private_files(cluster: Cluster) -> None:
    run = _run(cluster)
    assert alive(run.prometheus_pid or 0)
    assert listening_ports({run.prometheus_pid or 0}) == {run.prometheus_port: "127.0.0.1"}
    assert run.metrics == f"prometheus on 127.0.0.1:{run.prometheus_port}"
    assert stat.S_IMODE(prometheus.config_path(cluster.state).stat().st_mode) == 0o600
    for folder in (prometheus.folder(cluster.state), prometheus.data_dir(cluster.state)):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    # The admin API (snapshots, deleting series) and the lifecycle API (quit, reload) are refused.
    flags = _prom(cluster, "/api/v1/status/flags")
    assert flags["web.enable-admin-api"] == "false" and flags["web.enable-lifecycle"] == "false"
    assert flags["storage.tsdb.retention.time"] == "1d"
    base = prometheus.url(run.prometheus_port or 0)
    admin = requests.post(f"{base}/api/v1/admin/tsdb/snapshot", timeout=10)
    assert admin.status_code == 500 and admin.json()["error"] == "admin APIs disabled"
    assert requests.post(f"{base}/-/quit", timeout=10).status_code == 403
    assert alive(run.prometheus_pid or 0)


def test_ray_targets_are_scraped_and_queryable(cluster: Cluster) -> None:
    deadline = time.monotonic() + 60
    targets: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        targets = [t for t in _prom(cluster, "/api/v1/targets")["activeTargets"] if t["labels"]["job"] == "ray"]
        # Ray lists the node's metrics agent, then the autoscaler's and the dashboard's exporters.
        if len(targets) >= 3 and all(t["health"] == "up" for t in targets):
            break
        time.sleep(1)
    assert len(targets) >= 3 and all(t["health"] == "up" for t in targets), targets
    run = _run(cluster)
    assert {int(t["labels"]["instance"].rsplit(":", 1)[1]) for t in targets} <= set(run.ports.metrics())
    result: list[dict[str, Any]] = []
    while time.monotonic() < deadline + 15 and not result:
        result = _prom(cluster, "/api/v1/query", query="ray_node_cpu_count")["result"]
        time.sleep(0.5)
    assert result and float(result[0]["value"][1]) >= 1, result


def test_rays_dashboard_uses_this_prometheus(cluster: Cluster) -> None:
    resp = requests.get(
        f"{cluster.dashboard_url()}/api/prometheus_health",
        headers={"Authorization": f"Bearer {cluster.ray_token()}"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["result"] is True
    environ = Path(f"/proc/{_run(cluster).ray_pid}/environ").read_bytes().split(b"\0")
    assert f"RAY_PROMETHEUS_HOST={prometheus.url(_run(cluster).prometheus_port or 0)}".encode() in environ


def test_status_and_audit_report_metrics(cluster: Cluster) -> None:
    run = _run(cluster)
    info = report.status(cluster.state)["metrics"]
    assert info == {
        "running": True,
        "healthy": True,
        "pid": run.prometheus_pid,
        "url": f"http://127.0.0.1:{run.prometheus_port}",
        "status": run.metrics,
    }
    ups = [r for r in cluster.audit_records() if r.get("kind") == "cluster" and r.get("event") == "up"]
    assert ups and ups[-1]["metrics"] == run.metrics and ups[-1]["prometheus_port"] == run.prometheus_port


_PROBE = """import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5).close()
    print("open")
except OSError:
    print("refused")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the local-user rule is installed with the firewall, as root")
def test_other_local_users_cannot_reach_prometheus(cluster: Cluster) -> None:
    run = _run(cluster)
    assert run.firewall == "installed"
    port = str(run.prometheus_port)

    def probe(*prefix: str) -> str:
        # The system Python: the test's own interpreter may live where `nobody` cannot read.
        return subprocess.run(
            [*prefix, "/usr/bin/python3", "-c", _PROBE, port], capture_output=True, text=True, timeout=60, check=True
        ).stdout.strip()

    assert probe("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups") == "refused"
    assert probe() == "open"


def test_prometheus_exiting_during_start_up_is_a_clear_error(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        prom = prometheus.spawn(state, taken.getsockname()[1], [])
        with pytest.raises(ClusterError, match="Prometheus exited during start-up") as info:
            prometheus.wait_ready(state, prom, 30)
    assert str(prometheus.log_path(state)) in (info.value.hint or "")
    assert not pids_mentioning(prometheus.marker(state))


def test_no_prometheus_without_the_binary_or_when_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # a host without Debian's `prometheus` package
    assert lifecycle._metrics_unavailable(ClusterConfig()) == f"not installed: {prometheus.INSTALL_HINT}"
    monkeypatch.undo()
    assert lifecycle._metrics_unavailable(ClusterConfig()) is None
    assert (lifecycle._metrics_unavailable(ClusterConfig(metrics=False)) or "").startswith("off")


def test_down_stops_prometheus_and_closes_its_port() -> None:
    root = Path(tempfile.mkdtemp(prefix="rwtp-"))
    try:
        second = start_cluster(root, port=free_port(), profile="prom")
        run = runstate.read_run_state(second.state)
        assert run is not None and run.prometheus_pid is not None and run.prometheus_port is not None
        assert prometheus.marker(second.state) in cmdline(run.prometheus_pid)
        stop_cluster(root)
        assert not alive(run.prometheus_pid)
        assert not pids_mentioning(prometheus.marker(second.state))
        assert run.prometheus_port not in tcp_listeners()
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{prometheus.url(run.prometheus_port)}/-/ready", timeout=5)
    finally:
        stop_cluster(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="the local-user rule is installed with the firewall, as root")
def test_rays_user_reaches_prometheus_but_not_the_gateways_metrics(cluster: Cluster) -> None:
    """Replay of the metrics-reach finding: every job runs as Ray's user. Ray's dashboard queries Prometheus
    (RAY_PROMETHEUS_HOST), so that stays open to it; the gateway's own metrics are the control plane's only."""
    run = _run(cluster)
    assert run.firewall == "installed" and run.ray_user and run.ray_uid != os.geteuid()
    assert run.gateway_metrics_port is not None

    def probe(port: int | None, *prefix: str) -> str:
        return subprocess.run(
            [*prefix, "/usr/bin/python3", "-c", _PROBE, str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()

    as_ray = ("setpriv", f"--reuid={run.ray_uid}", f"--regid={run.ray_uid}", "--clear-groups")
    assert probe(run.gateway_metrics_port, *as_ray) == "refused"
    assert probe(run.prometheus_port, *as_ray) == "open"
    assert probe(run.gateway_metrics_port) == "open"
    assert (
        probe(run.gateway_metrics_port, "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups") == "refused"
    )

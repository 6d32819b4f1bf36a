"""One Prometheus server per cluster, on loopback, scraping Ray so that the dashboard's metrics pages have data.

Ray's metrics ports are plaintext and unauthenticated, so Prometheus runs next to them as the control plane's
user (never as Ray's: a job could then rewrite what the gateway's metrics pages show), listens on 127.0.0.1
only (behind the cluster's nftables table when there is one), keeps one day of data in the cluster's runtime
folder beside Ray's (state.py runtime_dir: metrics are not state worth keeping), creates everything private
(umask 077), and is started without the admin or lifecycle APIs (off unless asked for).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from raywarden.cluster.ports import RayPorts
from raywarden.cluster.procs import exit_status, pids_mentioning, spawn_detached, terminate
from raywarden.errors import ClusterError
from raywarden.files import ensure_private_dir, write_private
from raywarden.state import StateDir

HOST = "127.0.0.1"
SCRAPE_INTERVAL = "5s"
RETENTION_TIME = "1d"
# A bound on disk use besides the time limit: a busy cluster's one day must not fill the state dir's disk.
RETENTION_SIZE = "1GB"
# Ray writes the targets it wants scraped to a file in its temp dir (ray/_private/metrics_agent.py
# PrometheusServiceDiscoveryWriter). That file is Ray's user's, so a job could point Prometheus (the control
# plane's) at any address; Prometheus scrapes the ports raywarden gave Ray instead. They are the same: Ray's
# metrics ports of this node, the only ones the firewall lets anyone reach (loopback only, even for nodes).
INSTALL_HINT = "apt-get install --no-install-recommends prometheus"


def binary() -> str | None:
    return shutil.which("prometheus")


def folder(state: StateDir) -> Path:
    return state.root / "prometheus"


def config_path(state: StateDir) -> Path:
    return folder(state) / "prometheus.yml"


def data_dir(state: StateDir) -> Path:
    return state.runtime_dir / "prometheus"


def log_path(state: StateDir) -> Path:
    return state.logs_dir / "prometheus.log"


def url(port: int) -> str:
    return f"http://{HOST}:{port}"


def render_config(targets: list[int], gateway: int | None = None) -> str:
    """prometheus.yml as JSON (a subset of YAML): Ray's metrics ports on loopback, named in the file, and the
    gateway's own metrics port (docs/metrics.md, "The gateway's metrics")."""
    scrape: list[dict[str, object]] = [
        {
            "job_name": "ray",
            "static_configs": [{"targets": [f"{HOST}:{port}" for port in targets], "labels": {"job": "ray"}}],
        }
    ]
    if gateway is not None:
        scrape.append({"job_name": "raywarden-gateway", "static_configs": [{"targets": [f"{HOST}:{gateway}"]}]})
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": scrape,
    }
    return json.dumps(config, indent=2) + "\n"


def allocate_port(ray_ports: RayPorts, avoid: frozenset[int] = frozenset()) -> int:
    """A free loopback port that is none of Ray's (the kernel may hand back a port Ray's plan just took), nor
    one ``avoid`` names (another cluster's firewall)."""
    taken = set(ray_ports.all_fixed()) | avoid
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in taken and not ray_ports.min_worker <= port <= ray_ports.max_worker:
            return port
    raise ClusterError("found no free loopback port for Prometheus", hint="free some ports and retry `up`")


def command(state: StateDir, port: int, prometheus: str) -> list[str]:
    # The admin API (delete series, snapshots) and the lifecycle API (reload, quit over HTTP) stay off:
    # they are off by default and no flag here turns them on.
    return [
        prometheus,
        f"--config.file={config_path(state)}",
        f"--web.listen-address={HOST}:{port}",
        f"--storage.tsdb.path={data_dir(state)}",
        f"--storage.tsdb.retention.time={RETENTION_TIME}",
        f"--storage.tsdb.retention.size={RETENTION_SIZE}",
        "--web.page-title=raywarden Prometheus",
    ]


def marker(state: StateDir) -> str:
    """A piece of command line only this cluster's Prometheus has (every argument ends with a separator)."""
    return f"--config.file={config_path(state)} "


@dataclass(frozen=True)
class Prometheus:
    pid: int
    port: int

    @property
    def url(self) -> str:
        return url(self.port)


def spawn(state: StateDir, port: int, targets: list[int], gateway: int | None = None) -> Prometheus:
    """Write the config (scraping Ray's metrics ports ``targets`` and the gateway's metrics port) and start
    Prometheus detached, without waiting for it."""
    prometheus = binary()
    if prometheus is None:
        raise ClusterError("the `prometheus` command is not installed", hint=INSTALL_HINT)
    ensure_private_dir(folder(state))
    if not state.separated:
        ensure_private_dir(state.runtime_dir)  # separated: root's 0711 folder, made by raydir.prepare
    ensure_private_dir(data_dir(state))
    ensure_private_dir(state.logs_dir)
    write_private(config_path(state), render_config(targets, gateway).encode())
    # A Prometheus left over from a crashed `up` holds the data dir's lock; it belongs to this state dir only.
    stop(state, None)
    # Nothing from the CLI's environment: Prometheus needs no secret and no Ray setting.
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(folder(state))}
    # Prometheus creates its folders 0755 and files 0644; the child inherits this umask instead.
    previous = os.umask(0o077)
    try:
        pid = spawn_detached(command(state, port, prometheus), env=env, log_path=log_path(state), cwd=folder(state))
    finally:
        os.umask(previous)
    return Prometheus(pid, port)


def is_ready(port: int) -> bool:
    try:
        return requests.get(f"{url(port)}/-/ready", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def wait_ready(state: StateDir, prom: Prometheus, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        code = exit_status(prom.pid)
        if code is not None:
            raise ClusterError(
                f"Prometheus exited during start-up (exit code {code})",
                hint=f'see {log_path(state)}; to start without Prometheus, set "metrics": false in config.json',
            )
        if is_ready(prom.port):
            return
        if time.monotonic() >= deadline:
            raise ClusterError(
                f"Prometheus did not become ready on {prom.url} within {timeout_s:.0f}s", hint=f"see {log_path(state)}"
            )
        time.sleep(0.1)


def stop(state: StateDir, pid: int | None) -> list[int]:
    """Stop this cluster's Prometheus (and any other process started with its config). Returns what is left."""
    # By command line, not by the recorded pid alone: a recycled pid must never be signalled.
    found = pids_mentioning(marker(state))
    if found:
        terminate(found, grace_s=10.0)
    # Reap our own child, if it is one, so that it does not linger as a zombie in `ps`.
    if pid is not None:
        exit_status(pid)
    return pids_mentioning(marker(state))


def describe(port: int | None, why: str | None = None) -> str:
    """The one-line metrics status kept in the run file, shown by `status` and written to the audit log."""
    if port is not None:
        return f"prometheus on {HOST}:{port}"
    return why or f"not installed: {INSTALL_HINT}"

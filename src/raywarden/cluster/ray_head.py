"""Start and stop a hardened Ray head: mutual TLS, token auth, every listener on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import requests

from raywarden.cluster import raydir
from raywarden.cluster.ports import RayPorts
from raywarden.cluster.procs import alive, exit_status, pids_in_session, pids_mentioning, spawn_as, terminate
from raywarden.cluster.raydir import RayFiles
from raywarden.cluster.rayuser import RayUser
from raywarden.cluster.serve import SERVE_ENVIRONMENT
from raywarden.errors import ClusterError
from raywarden.files import read_private
from raywarden.state import StateDir, trusted_ca_file

HEAD_ADDRESS = "127.0.0.1"


# Where Ray looks for Prometheus when raywarden runs none: port 1 is closed, and only root could open it.
# Ray's default, localhost:9090, is any local user's to bind (or Debian's system-wide Prometheus), and the
# dashboard would show whatever answers there as this cluster's metrics.
NO_PROMETHEUS = "http://127.0.0.1:1"


# What Ray and its jobs get from the environment of whoever ran `up` or `join`: names (or prefixes) that say
# how to reach package indexes, the locale and the time zone. Everything else stays out, so that a secret in
# the operator's shell (a cloud key, a token) never reaches a job.
PASSED_ENV = ("PATH", "LANG", "LANGUAGE", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE")
PASSED_ENV_PREFIXES = ("LC_", "PIP_", "UV_", "CUDA_", "NVIDIA_")
PROXY_ENV = ("http_proxy", "https_proxy", "no_proxy", "all_proxy")


def passed_environment(source: dict[str, str] | None = None) -> dict[str, str]:
    source = dict(os.environ) if source is None else source
    return {
        k: v
        for k, v in source.items()
        if k in PASSED_ENV or k.startswith(PASSED_ENV_PREFIXES) or k.lower() in PROXY_ENV
    }


def ray_environment(
    files: RayFiles, ports: RayPorts, *, multinode: bool = False, prometheus_url: str | None = None
) -> dict[str, str]:
    """The environment every Ray process of the head inherits (job drivers included)."""
    env = node_environment(files, loopback=not multinode)
    # These two Prometheus ports are fixed by default (44227, 44217): per-cluster values keep
    # two clusters on one host apart.
    env["DASHBOARD_METRIC_PORT"] = str(ports.dashboard_metrics)
    env["AUTOSCALER_METRIC_PORT"] = str(ports.autoscaler_metrics)
    env["RAY_DASHBOARD_ENABLE_PROFILING"] = "1"  # admins only, by policy ("dashboard.profile", docs/browser.md)
    # The dashboard's /api/prometheus_health and metrics queries go here (docs/metrics.md).
    env["RAY_PROMETHEUS_HOST"] = prometheus_url or NO_PROMETHEUS
    return env


def node_environment(files: RayFiles, *, loopback: bool) -> dict[str, str]:
    """Mutual TLS, token auth and no usage stats, for any Ray node (head or worker)."""
    # An allow-list of the caller's environment: nothing Ray-related (RAY_ADDRESS, another token...) and no
    # secret of the operator's leaks in.
    env = passed_environment()
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    if files.user.is_current:
        env["HOME"] = os.environ.get("HOME", str(files.home))
    else:
        env.update({"HOME": str(files.home), "USER": files.user.name, "LOGNAME": files.user.name})
        # No installer Ray runs for a runtime_env reads config a job could have written (docs/threat-model.md):
        # HOME is root's and read-only; pip skips per-user config while PIP_CONFIG_FILE exists, uv reads none.
        env.update(
            {
                "XDG_CONFIG_HOME": str(files.home / ".config"),
                "XDG_CACHE_HOME": str(files.cache),
                "PIP_CONFIG_FILE": str(files.pip_config),
                "PIP_NO_CACHE_DIR": "1",
                "UV_NO_CONFIG": "1",
                "UV_NO_CACHE": "1",
            }
        )
    env.update(SERVE_ENVIRONMENT)
    env.update(
        {
            # Mutual TLS on every gRPC channel, with this node's internal-CA certificate.
            "RAY_USE_TLS": "1",
            "RAY_TLS_SERVER_CERT": str(files.node_cert),
            "RAY_TLS_SERVER_KEY": str(files.node_key),
            "RAY_TLS_CA_CERT": str(files.ca_cert),
            # Token auth; the token stays in its 0600 file in Ray's folder (raydir.py), only its path is here.
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(files.token),
            "RAY_USAGE_STATS_ENABLED": "0",
            # `down` stops the cluster; Ray's default 30 s drain on SIGTERM only delays that.
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        }
    )
    if loopback:
        # Without this, `ray start` swaps a loopback --node-ip-address for the host's outward IP
        # (ray/_private/services.py get_node_ip_address), and its listeners follow that address.
        # Multi-node mode must not set it: worker-node `ray start` aborts with it (scripts.py).
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return env


def ray_binary() -> str:
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray is None:
        raise ClusterError("the `ray` command is not installed", hint="pip install 'ray[default]'")
    return ray


def head_command(
    state: StateDir, ports: RayPorts, num_cpus: int | None = None, node_ip: str = HEAD_ADDRESS
) -> list[str]:
    command = [
        ray_binary(),
        "start",
        "--head",
        "--block",
        f"--node-ip-address={node_ip}",
        f"--port={ports.gcs}",
        f"--temp-dir={state.ray_temp_dir}",
        "--include-dashboard=true",
        f"--dashboard-host={HEAD_ADDRESS}",
        f"--dashboard-port={ports.dashboard}",
        f"--ray-client-server-port={ports.client_server}",
        f"--node-manager-port={ports.node_manager}",
        f"--object-manager-port={ports.object_manager}",
        f"--dashboard-agent-listen-port={ports.dashboard_agent_http}",
        f"--dashboard-agent-grpc-port={ports.dashboard_agent_grpc}",
        f"--metrics-export-port={ports.metrics_export}",
        f"--runtime-env-agent-port={ports.runtime_env_agent}",
        f"--min-worker-port={ports.min_worker}",
        f"--max-worker-port={ports.max_worker}",
        "--disable-usage-stats",
    ]
    if num_cpus is not None:
        command.append(f"--num-cpus={num_cpus}")
    return command


@dataclass(frozen=True)
class RayHead:
    pid: int
    ports: RayPorts

    @property
    def dashboard_url(self) -> str:
        return f"http://{HEAD_ADDRESS}:{self.ports.dashboard}"


def prepare_ray_files(state: StateDir, user: RayUser) -> RayFiles:
    """Ray's own folder with what the head's Ray needs (raydir.py)."""
    return raydir.prepare(
        state.ray_dir,
        user,
        cert=state.node_cert,
        key=state.node_key,
        # The internal CA bundle during a CA rotation: Ray's servers read it once, so both CAs must be in it
        # before they start (docs/credentials.md).
        ca=trusted_ca_file(state, "internal"),
        token=state.ray_token,
    )


def spawn_head(
    state: StateDir,
    ports: RayPorts,
    files: RayFiles,
    *,
    num_cpus: int | None = None,
    node_ip: str | None = None,
    prometheus_url: str | None = None,
) -> RayHead:
    """Start the head as Ray's user without waiting for it; ``node_ip`` (multi-node mode) replaces loopback."""
    same = files.user.is_current
    pid = spawn_as(
        head_command(state, ports, num_cpus, node_ip or HEAD_ADDRESS),
        env=ray_environment(files, ports, multinode=node_ip is not None, prometheus_url=prometheus_url),
        log_path=files.start_log,
        cwd=files.temp_dir,
        uid=None if same else files.user.uid,
        gid=None if same else files.user.gid,
    )
    return RayHead(pid, ports)


def _agent_listens(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def wait_for_dashboard(state: StateDir, head: RayHead, timeout_s: float, agent_host: str = HEAD_ADDRESS) -> None:
    token = read_private(state.ray_token).decode().strip()
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        code = exit_status(head.pid)
        if code is not None:
            raise ClusterError(
                f"Ray exited during start-up (exit code {code})",
                hint=f"see {raydir.start_log(state.ray_dir)} and the logs under {state.ray_temp_dir}",
            )
        try:
            resp = requests.get(
                f"{head.dashboard_url}/api/version", headers={"Authorization": f"Bearer {token}"}, timeout=2
            )
            if resp.status_code == 200:
                # The job agent registers a little after the dashboard; jobs need it.
                jobs = requests.get(
                    f"{head.dashboard_url}/api/jobs/", headers={"Authorization": f"Bearer {token}"}, timeout=5
                )
                # Submissions go through the head's dashboard agent, which Ray waits for only 10 s: a loaded
                # host can take longer to start it, so `up` waits until it listens.
                if jobs.status_code == 200 and _agent_listens(agent_host, head.ports.dashboard_agent_http):
                    return
                last = f"jobs API answered {jobs.status_code}" if jobs.status_code != 200 else "job agent not up"
            else:
                last = f"dashboard answered {resp.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.3)
    raise ClusterError(
        f"Ray's dashboard did not become ready within {timeout_s:.0f}s ({last})",
        hint=f"see {raydir.start_log(state.ray_dir)}",
    )


class RayNode(Protocol):
    """A head's StateDir or a worker's NodeState: what finding a node's Ray processes needs."""

    @property
    def ray_temp_dir(self) -> Path: ...


def cluster_pids(state: RayNode, pid: int | None) -> list[int]:
    """Ray processes of this cluster: its session, plus anything naming its temp dir (job drivers
    start sessions of their own)."""
    found = set(pids_mentioning(str(state.ray_temp_dir)))
    if pid is not None:
        found |= set(pids_in_session(pid))
    return sorted(found)


def stop_head(state: RayNode, pid: int | None, *, grace_s: float = 20.0) -> list[int]:
    """Stop `ray start --block` (which stops its children), then sweep anything left of this cluster."""
    if pid is not None and alive(pid):
        terminate([pid], grace_s=grace_s)
    leftovers = cluster_pids(state, pid)
    if leftovers:
        terminate(leftovers, grace_s=5.0)
    return cluster_pids(state, pid)

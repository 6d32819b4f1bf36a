"""What `up` started for one state dir (its run file), so that `down`, `status` and the other commands find
exactly those processes, and the ports Ray's processes of the cluster listen on."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from raywarden.cluster.ports import RayPorts
from raywarden.cluster.procs import listening_ports
from raywarden.cluster.ray_head import cluster_pids
from raywarden.config import Listen
from raywarden.files import write_private
from raywarden.state import StateDir

RAY_START_TIMEOUT_S = 120.0


class RunState(BaseModel):
    """What `up` started, so that `down` and `status` find exactly those processes."""

    model_config = ConfigDict(extra="forbid")
    ray_pid: int
    gateway_pid: int
    ports: RayPorts
    listen: Listen
    started_at: str
    firewall: str  # "installed", or why it is not
    # Multi-node mode: the head's address on the network workers use (None: single node, all on loopback).
    node_ip: str | None = None
    # The cluster's Prometheus (None: not running; `metrics` says why). Absent from older run files.
    prometheus_pid: int | None = None
    prometheus_port: int | None = None
    metrics: str | None = None
    # The OS user Ray runs as (absent from older run files: the control plane's own).
    ray_user: str | None = None
    ray_uid: int | None = None
    # `up --num-cpus`, kept for restarts of the head's Ray (`cert rotate --head`).
    num_cpus: int | None = None
    # The gateway's own metrics, on loopback (absent from older run files).
    gateway_metrics_port: int | None = None
    # Ray Serve's HTTP proxy on the head's loopback, behind the gateway's Serve listener (None: no Serve).
    serve_port: int | None = None


def run_file(state: StateDir) -> Path:
    return state.run_dir / "cluster.json"


def read_run_state(state: StateDir) -> RunState | None:
    try:
        return RunState.model_validate_json(run_file(state).read_text())
    except FileNotFoundError:
        return None


def write_run_state(state: StateDir, run: RunState) -> None:
    write_private(run_file(state), run.model_dump_json(indent=2).encode())


def ray_listeners(state: StateDir, ray_pid: int | None = None) -> dict[int, str]:
    """TCP ports Ray's processes of this cluster listen on, with the address each is bound to."""
    if ray_pid is None:
        run = read_run_state(state)
        ray_pid = run.ray_pid if run else None
    return listening_ports(set(cluster_pids(state, ray_pid)))

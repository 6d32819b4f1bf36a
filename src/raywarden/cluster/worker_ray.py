"""A worker node's Ray: started as Ray's user with the node's certificate, stopped with a drain.

Ray 2.60's `ray start --block` drains its node on SIGTERM (reason PREEMPTION: no new work is scheduled
there, running tasks go on) and waits up to RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S for the raylet to finish
and exit, then stops everything (ray/_private/node.py, ``_drain_node_before_shutdown``). That deadline is
fixed when Ray starts, so it is computed then from the certificate Ray starts with: the drain must end, and
Ray must be stopped, while that certificate is still valid.
"""

from __future__ import annotations

import time
from typing import Literal

from cryptography import x509

from raywarden.cluster import multinode, raydir
from raywarden.cluster.certlife import Lifetime
from raywarden.cluster.nodestate import NodeConfig, NodeState
from raywarden.cluster.procs import alive, exit_status, is_loopback, listening_ports, spawn_as, terminate
from raywarden.cluster.ray_head import cluster_pids, node_environment, ray_binary
from raywarden.cluster.raydir import RayFiles
from raywarden.cluster.rayuser import RayUser
from raywarden.errors import ClusterError
from raywarden.pki.certs import load_cert

START_TIMEOUT_S = 120.0
# Between the end of a drain and the old certificate's expiry: Ray stops its processes, then we sweep.
STOP_MARGIN_S = 20.0
Drain = Literal["complete", "deadline", "not running"]


def drain_window(cert: x509.Certificate, drain_timeout_s: float) -> float:
    """How long a drain may last for a Ray started with ``cert``: it starts at the renewal point and must
    leave STOP_MARGIN_S before expiry; never more than the head's ``node_drain_timeout``."""
    life = Lifetime.of(cert)
    room = (life.not_after - life.renew_at()).total_seconds() - STOP_MARGIN_S
    return max(0.0, min(drain_timeout_s, room))


def worker_command(files: RayFiles, config: NodeConfig, ray: str) -> list[str]:
    p = config.ports
    command = [
        ray,
        "start",
        "--block",
        f"--address={config.gcs_address}",
        f"--node-ip-address={config.address}",
        # Ray gives the node a new NodeID at every start; the name says which raywarden node it is.
        f"--node-name={config.name}",
        f"--temp-dir={files.temp_dir}",
        f"--node-manager-port={p.node_manager}",
        f"--object-manager-port={p.object_manager}",
        f"--dashboard-agent-listen-port={p.dashboard_agent_http}",
        f"--dashboard-agent-grpc-port={p.dashboard_agent_grpc}",
        f"--metrics-export-port={p.metrics_export}",
        f"--runtime-env-agent-port={p.runtime_env_agent}",
        f"--min-worker-port={p.min_worker}",
        f"--max-worker-port={p.max_worker}",
        "--disable-usage-stats",
    ]
    if config.num_cpus is not None:
        command.append(f"--num-cpus={config.num_cpus}")
    return command


def start(node: NodeState, config: NodeConfig, *, timeout_s: float = START_TIMEOUT_S) -> int:
    """Copy the node's current credentials into Ray's folder, start Ray on the node's fixed ports and wait
    until it registered with the head's GCS. Saves the pid in node.json at once (so that `down` finds it)."""
    if config.ray_user is None:
        raise ClusterError(f"{node.config_path} names no Ray user", hint="`raywarden down`, then join again")
    user = RayUser.lookup(config.ray_user)
    ray = ray_binary()
    files = raydir.prepare(
        node.ray_dir, user, cert=node.node_cert, key=node.node_key, ca=node.internal_ca_cert, token=node.ray_token
    )
    drain_s = drain_window(load_cert(node.node_cert), config.drain_timeout_s)
    env = node_environment(files, loopback=False)
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = f"{drain_s:.0f}"
    # The start log is appended to by every start: only what this one writes counts.
    offset = files.start_log.stat().st_size if files.start_log.exists() else 0
    same = files.user.is_current
    pid = spawn_as(
        worker_command(files, config, ray),
        env=env,
        log_path=files.start_log,
        cwd=files.temp_dir,
        uid=None if same else files.user.uid,
        gid=None if same else files.user.gid,
    )
    node.update(config, ray_pid=pid, ray_drain_s=drain_s)
    _wait_for_registration(files, config, pid, timeout_s, offset)
    raydir.tighten(files)
    exposed = {p: a for p, a in listening_ports(set(cluster_pids(node, pid))).items() if not is_loopback(a)}
    node.update(config, firewall=multinode.cover_unplanned(node.table, config.ports, exposed))
    return pid


def _wait_for_registration(files: RayFiles, config: NodeConfig, pid: int, timeout_s: float, offset: int) -> None:
    """`ray start --block` prints "Ray runtime started" once the raylet registered with the head's GCS."""
    log_path = files.start_log
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = exit_status(pid)
        if code is not None:
            raise ClusterError(
                f"Ray exited during start-up (exit code {code})",
                hint=f"see {log_path} and the logs under {files.temp_dir}",
            )
        with log_path.open("rb") as log:
            log.seek(offset)
            if b"Ray runtime started" in log.read():
                return
        time.sleep(0.3)
    raise ClusterError(
        f"the Ray worker did not register with {config.gcs_address} within {timeout_s:.0f}s", hint=f"see {log_path}"
    )


def stop(node: NodeState, pid: int | None, wait_s: float) -> tuple[Drain, float]:
    """SIGTERM: Ray drains its node, waits for running work (up to the deadline it started with), then stops.
    If it is still there after ``wait_s`` (a deadline shorter than Ray's own), it is killed. Anything of this
    node's Ray left is swept. Returns how the drain ended and how long it took."""
    started = time.monotonic()
    if pid is None or not alive(pid):
        leftovers = cluster_pids(node, pid)
        if leftovers:
            terminate(leftovers, grace_s=5.0)
        return "not running", 0.0
    terminate([pid], grace_s=wait_s + STOP_MARGIN_S / 2)
    elapsed = time.monotonic() - started
    leftovers = cluster_pids(node, pid)
    if leftovers:
        terminate(leftovers, grace_s=5.0)
    # Ray exits as soon as the raylet finished; at its deadline it stops the rest itself, a little later.
    return ("complete" if elapsed < wait_s - 0.5 else "deadline"), round(elapsed, 2)


def leftovers(node: NodeState, pid: int | None) -> list[int]:
    """Processes of this node's Ray still running."""
    return cluster_pids(node, pid)

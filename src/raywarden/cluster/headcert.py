"""`raywarden cert rotate --head`: a new head certificate, taken into use by restarting the head's Ray in place.

Ray's GCS and the head's raylet read their certificate once, when they start, and live as long as the cluster;
nothing short of restarting them renews it (docs/credentials.md says why this is the least disruptive way).
The restart keeps what clients and nodes know of the head: the gateway keeps running (same pid, same
certificate), Ray comes back on the same ports (the GCS address workers dial, the dashboard the gateway
forwards to), and the firewall is untouched. Jobs running on the head's Ray end with it, so the caller
decides about them first (the CLI waits for them or is told to go ahead).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from raywarden.audit.cluster import open_cluster_audit
from raywarden.cluster import prometheus, raydir
from raywarden.cluster.procs import alive
from raywarden.cluster.ray_head import prepare_ray_files, spawn_head, stop_head, wait_for_dashboard
from raywarden.cluster.rayuser import RayUser
from raywarden.cluster.runstate import RAY_START_TIMEOUT_S, read_run_state, write_run_state
from raywarden.cluster.setup import reissue_head_certificate
from raywarden.errors import ClusterError
from raywarden.pki.certs import load_cert, serial_hex
from raywarden.state import StateDir

Progress = Callable[[str], None]


def rotate_head(state: StateDir, *, jobs_ended: list[str], progress: Progress = lambda _: None) -> dict[str, Any]:
    """Issue a new head certificate; if the head's Ray runs, restart it with that certificate."""
    config = state.load_config()
    run = read_run_state(state)
    old = load_cert(state.node_cert)
    running = run is not None and alive(run.ray_pid)
    if run is not None and running:
        progress("stopping the head's Ray (the gateway stays up)")
        left = stop_head(state, run.ray_pid)
        if left:
            raise ClusterError(f"processes of the head's Ray are still running: {left}", hint="kill them by hand")
    new = reissue_head_certificate(state, config, node_ip=run.node_ip if run else None)
    ray_pid = None
    if run is not None and running:
        progress(f"starting the head's Ray with certificate {serial_hex(new)} on the same ports")
        user = RayUser.lookup(run.ray_user) if run.ray_user else RayUser.current()
        files = prepare_ray_files(state, user)
        raydir.forget_cluster_address(files)
        prom = prometheus.url(run.prometheus_port) if run.prometheus_port and run.prometheus_pid else None
        head = spawn_head(state, run.ports, files, num_cpus=run.num_cpus, node_ip=run.node_ip, prometheus_url=prom)
        write_run_state(state, run.model_copy(update={"ray_pid": head.pid}))
        try:
            wait_for_dashboard(state, head, RAY_START_TIMEOUT_S)
        except ClusterError as exc:
            raise ClusterError(
                f"the head's Ray did not start again with certificate {serial_hex(new)}: {exc.message}",
                hint=f"{exc.hint}; the gateway is still up: `raywarden down` then `raywarden up` starts the cluster "
                "again (with this certificate)",
            ) from None
        raydir.tighten(files)
        ray_pid = head.pid
    result = {
        "old_serial": serial_hex(old),
        "serial": serial_hex(new),
        "not_after": new.not_valid_after_utc.isoformat(),
        "ray_restarted": ray_pid is not None,
        "ray_pid": ray_pid,
        "gateway_pid": run.gateway_pid if run else None,
        "jobs_ended": jobs_ended,
    }
    audit = open_cluster_audit(state, config)
    try:
        audit.append(
            {
                "kind": "cluster",
                "event": "cert.rotate",
                "certificate": "head",
                "actor": f"local:{os.getuid()}",
                **result,
            }
        )
    finally:
        audit.close()
    return result

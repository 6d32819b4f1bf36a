"""`up` and `down` for one state dir: Ray head, firewall and gateway, started and stopped in order (`status`:
cluster/report.py)."""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from cryptography import x509

from raywarden.audit.cluster import open_cluster_audit
from raywarden.cluster import firewall, multinode, privsep, prometheus, raydir, serve
from raywarden.cluster.listen import change_listen, change_serve_listen, require_free
from raywarden.cluster.ports import RayPorts
from raywarden.cluster.procs import alive, exit_status, is_loopback, pids_mentioning, spawn_detached, terminate
from raywarden.cluster.ray_head import (
    HEAD_ADDRESS,
    RayHead,
    prepare_ray_files,
    spawn_head,
    stop_head,
    wait_for_dashboard,
)
from raywarden.cluster.report import gateway_answers
from raywarden.cluster.runstate import (
    RAY_START_TIMEOUT_S,
    RunState,
    ray_listeners,
    read_run_state,
    run_file,
    write_run_state,
)
from raywarden.cluster.setup import gateway_url, reissue_head_certificate, renew_gateway_certificate_if_due
from raywarden.config import ClusterConfig, Listen
from raywarden.errors import ClusterError
from raywarden.files import ensure_private_dir
from raywarden.pki.certs import load_cert, serial_hex
from raywarden.state import StateDir

Progress = Callable[[str], None]


def up(
    state: StateDir,
    *,
    listen: Listen | None = None,
    num_cpus: int | None = None,
    node_ip: str | None = None,
    ray_user: str | None = None,
    shared_os_user: bool = False,
    serve_listen: Listen | None = None,
    progress: Progress = lambda _: None,
) -> RunState:
    config = state.load_config()
    if serve_listen is not None or config.serve_listen is not None:
        serve.require_installed()
    if node_ip is not None:
        # Checked before anything starts: multi-node mode never runs Ray without its firewall.
        node_ip = multinode.check_node_ip(node_ip)
        firewall.require_available("multi-node mode (--node-ip)")
    running = read_run_state(state)
    if running is not None and (alive(running.ray_pid) or alive(running.gateway_pid)):
        raise ClusterError(
            f"the cluster in {state.root} is already up (gateway on {running.listen})",
            hint="`raywarden status` shows it; `raywarden down` stops it",
        )
    if listen is not None and listen != config.listen:
        config = change_listen(state, config, listen)
    if serve_listen is not None and serve_listen != config.serve_listen:
        config = change_serve_listen(state, config, serve_listen)
    require_free(config.listen)
    if config.serve_listen is not None:
        if config.serve_listen == config.listen:
            raise ClusterError(
                f"--serve-listen {config.serve_listen} is the gateway's own address",
                hint="give the Serve listener a port of its own, e.g. --serve-listen 0.0.0.0:8000",
            )
        require_free(config.serve_listen)
    # Who Ray runs as is settled (and recorded) before anything starts: a refusal leaves nothing behind.
    config, user = privsep.choose_ray_user(state, config, ray_user=ray_user, shared_os_user=shared_os_user)
    if node_ip is not None:
        config = multinode.prepare_head(state, config, node_ip)
    else:
        reissue_head_certificate(state, config)
    head_cert = load_cert(state.node_cert)
    for folder in (state.run_dir, state.logs_dir):
        ensure_private_dir(folder)
    files = prepare_ray_files(state, user)
    owners = firewall.owner_uids(user.uid)

    metrics_why = _metrics_unavailable(config)
    claimed = firewall.claimed_ports(firewall.table_name(state))
    if node_ip is None:
        progress("starting Ray head (mutual TLS, token auth, loopback only) and the gateway")
        ports = RayPorts.allocate(HEAD_ADDRESS, avoid=claimed)
    else:
        progress(f"installing firewall rules, then starting Ray head on {node_ip} (mutual TLS, token auth)")
        ports = RayPorts.allocate("0.0.0.0", avoid=claimed)  # noqa: S104 - probing for free ports, Ray binds * here
    prom_port = prometheus.allocate_port(ports, claimed) if metrics_why is None else None
    gateway_metrics = prometheus.allocate_port(ports, claimed | {prom_port} if prom_port else claimed)
    serve_port = None
    if config.serve_listen is not None:
        serve_port = prometheus.allocate_port(ports, claimed | {p for p in (prom_port, gateway_metrics) if p})
    # Loopback ports of this cluster kept from remote hosts and from other local users: Serve's proxy answers
    # anyone who reaches it, so only the gateway may. Ray's user keeps Prometheus (its dashboard queries it,
    # RAY_PROMETHEUS_HOST); the gateway's metrics are the control plane's only (``control`` below).
    loopback_extra = [p for p in (prom_port, serve_port) if p is not None]
    if node_ip is not None:
        multinode.install_head_firewall(state, config, ports, owners)
        firewall.add_ports(firewall.table_name(state), loopback_extra)
        firewall.add_ports(firewall.table_name(state), [gateway_metrics], control=True)
    head: RayHead | None = None
    gateway_renewal: tuple[str, x509.Certificate] | None = None
    gateway_pid: int | None = None
    prom: prometheus.Prometheus | None = None
    try:
        prom_url = prometheus.url(prom_port) if prom_port is not None else None
        # Prometheus, Ray and the gateway start side by side: Prometheus scrapes Ray's metrics ports, which
        # raywarden chose, and needs nothing from Ray to start.
        if prom_port is not None:
            prom = prometheus.spawn(state, prom_port, ports.metrics(), gateway_metrics)
        head = spawn_head(state, ports, files, num_cpus=num_cpus, node_ip=node_ip, prometheus_url=prom_url)
        # A gateway certificate that came due while the cluster was down is renewed before the gateway starts.
        gateway_renewal = renew_gateway_certificate_if_due(state)
        # The gateway needs nothing from Ray until it forwards a request, so it starts while Ray boots
        # (until Ray answers, it refuses requests with 503); `up` returns only when both are ready.
        s_url = serve.serve_url(serve_port) if serve_port is not None else None
        gateway_pid = _spawn_gateway(state, head.dashboard_url, prom_url, gateway_metrics, s_url)
        wait_for_dashboard(state, head, RAY_START_TIMEOUT_S, node_ip or HEAD_ADDRESS)
        # Ray has made its session, sockets, logs and runtime-env folders 0777 by now: only its user may enter.
        raydir.tighten(files)
        progress("checking Ray's listeners")
        exposed = {p: a for p, a in ray_listeners(state, head.pid).items() if not is_loopback(a)}
        if node_ip is None:
            fw = firewall.protect(
                state,
                ports,
                exposed,
                extra=loopback_extra,
                owners=owners,
                control=[gateway_metrics],
                public=multinode.public_ports(config),
            )
        else:
            fw = multinode.cover_unplanned(firewall.table_name(state), ports, exposed)
        progress("waiting for the gateway" + (" and Prometheus" if prom is not None else ""))
        _wait_for_gateway(state, config, gateway_pid)
        if prom is not None:
            # Normally ready long before Ray: this costs one request.
            prometheus.wait_ready(state, prom, 30.0)
        if serve_port is not None:
            progress("starting Ray Serve (its proxy on loopback, head node only)")
            serve.start(state, head.dashboard_url, serve_port)
    except BaseException:
        if gateway_pid is not None:
            terminate([gateway_pid], grace_s=5)
        if head is not None:
            stop_head(state, head.pid)
        if prom is not None:
            prometheus.stop(state, prom.pid)
        firewall.remove(state)
        raydir.forget_secrets(files.folder)
        raise
    metrics = prometheus.describe(prom_port, metrics_why)
    run = RunState(
        ray_pid=head.pid,
        gateway_pid=gateway_pid,
        ports=ports,
        listen=config.listen,
        started_at=dt.datetime.now(dt.timezone.utc).isoformat(),
        firewall=fw,
        node_ip=node_ip,
        prometheus_pid=prom.pid if prom else None,
        prometheus_port=prom_port,
        metrics=metrics,
        ray_user=user.name,
        ray_uid=user.uid,
        num_cpus=num_cpus,
        gateway_metrics_port=gateway_metrics,
        serve_port=serve_port,
    )
    write_run_state(state, run)
    audit = open_cluster_audit(state, config)
    try:
        audit.append(
            {
                "kind": "cluster",
                "event": "up",
                "actor": _local_actor(),
                "listen": str(config.listen),
                "firewall": fw,
                "ray_ports": ports.model_dump(),
                "node_ip": node_ip,
                "metrics": metrics,
                "prometheus_port": prom_port,
                "ray_user": user.name,
                "ray_uid": user.uid,
                "control_plane_uid": os.geteuid(),
                "shared_os_user": user.is_current,
                "head_cert_serial": serial_hex(head_cert),
                "head_cert_not_after": head_cert.not_valid_after_utc.isoformat(),
                "gateway_cert_renewed_from": gateway_renewal[0] if gateway_renewal else None,
                "serve_listen": str(config.serve_listen) if config.serve_listen else None,
                "serve_port": serve_port,
            }
        )
    finally:
        audit.close()
    return run


def down(state: StateDir, *, progress: Progress = lambda _: None) -> dict[str, Any]:
    config = state.load_config()
    run = read_run_state(state)
    progress("stopping gateway")
    if run is not None and alive(run.gateway_pid):
        terminate([run.gateway_pid], grace_s=15.0)
    gateway_left = pids_mentioning(f"raywarden.gateway --state-dir {state.root} ")
    if gateway_left:
        terminate(gateway_left, grace_s=5.0)
    progress("stopping Prometheus")
    left = prometheus.stop(state, run.prometheus_pid if run else None)
    progress("stopping Ray")
    left += stop_head(state, run.ray_pid if run else None)
    firewall.remove(state)
    if not left:
        raydir.forget_secrets(state.ray_dir)
    if left:
        raise ClusterError(f"processes of this cluster are still running: {left}", hint="kill them by hand")
    run_file(state).unlink(missing_ok=True)
    audit = open_cluster_audit(state, config)
    try:
        audit.append({"kind": "cluster", "event": "down", "actor": _local_actor(), "was_running": run is not None})
    finally:
        audit.close()
    return {"stopped": run is not None, "state_dir": str(state.root)}


def _metrics_unavailable(config: ClusterConfig) -> str | None:
    """Why `up` runs no Prometheus, or None when it does."""
    if not config.metrics:
        return 'off ("metrics": false in config.json)'
    if prometheus.binary() is None:
        return f"not installed: {prometheus.INSTALL_HINT}"
    return None


def _spawn_gateway(
    state: StateDir, dashboard_url: str, prometheus_url: str | None, metrics_port: int, serve_url: str | None
) -> int:
    """The gateway's supervisor, which starts its workers (gateway/supervisor.py)."""
    argv = [sys.executable, "-m", "raywarden.gateway", "--state-dir", str(state.root), "--dashboard-url", dashboard_url]
    if prometheus_url is not None:
        argv += ["--prometheus-url", prometheus_url]
    if serve_url is not None:
        argv += ["--serve-url", serve_url]
    argv += ["--metrics-port", str(metrics_port)]
    return spawn_detached(
        argv,
        env={k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
        log_path=state.logs_dir / "gateway.log",
    )


def _wait_for_gateway(state: StateDir, config: ClusterConfig, pid: int) -> None:
    deadline = time.monotonic() + 30
    url = gateway_url(config) + "/api/version"
    while time.monotonic() < deadline:
        code = exit_status(pid)
        if code is not None:
            raise ClusterError(
                f"the gateway exited during start-up (exit code {code})", hint=f"see {state.logs_dir / 'gateway.log'}"
            )
        if gateway_answers(url, state):
            return
        time.sleep(0.1)
    raise ClusterError("the gateway did not answer within 30s", hint=f"see {state.logs_dir / 'gateway.log'}")


def _local_actor() -> str:
    return f"local:{os.getuid()}"

"""`status` for one state dir: what runs, whether each part answers, and the cluster's certificates."""

from __future__ import annotations

import datetime as dt
import json
import ssl
from typing import Any

import requests

from raywarden.audit import audit_public_key_pem
from raywarden.cluster import prometheus, serve
from raywarden.cluster.procs import alive, is_loopback
from raywarden.cluster.ray_head import HEAD_ADDRESS
from raywarden.cluster.runstate import RunState, ray_listeners, read_run_state
from raywarden.cluster.setup import gateway_url
from raywarden.config import ClusterConfig
from raywarden.files import read_private
from raywarden.gateway.runinfo import metrics_url, workers_file
from raywarden.pki.certs import fingerprint, load_cert
from raywarden.state import StateDir, trusted_ca_file


def gateway_answers(url: str, state: StateDir) -> bool:
    """Without a credential the gateway must answer 401 from itself: proof that it is serving and refusing."""
    try:
        resp = requests.get(url, verify=str(trusted_ca_file(state, "access")), timeout=2)
    except requests.RequestException:
        return False
    return resp.status_code == 401 and resp.headers.get("x-raywarden-gateway") == "1"


def _gateway_workers(state: StateDir) -> list[int]:
    """The gateway's worker processes that are alive, as its supervisor lists them."""
    try:
        listed = json.loads(workers_file(state).read_text()).get("workers", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [int(p) for p in listed if isinstance(p, int) and alive(p)]


def _serve_status(config: ClusterConfig, run: RunState | None) -> dict[str, Any]:
    """The Serve listener's URL (what clients call) and Serve's own proxy on loopback (docs/serve.md)."""
    listen = config.serve_listen
    running = run is not None and run.serve_port is not None and serve.proxy_answers(run.serve_port)
    return {
        "enabled": listen is not None,
        "url": f"https://{listen.url_host()}:{listen.port}" if listen is not None else None,
        "listen": str(listen) if listen is not None else None,
        "proxy": serve.serve_url(run.serve_port) if run is not None and run.serve_port is not None else None,
        "running": running,
    }


def status(state: StateDir) -> dict[str, Any]:
    config = state.load_config()
    run = read_run_state(state)
    ray_up = run is not None and alive(run.ray_pid)
    gateway_up = run is not None and alive(run.gateway_pid)
    dashboard_ok = False
    if ray_up and run is not None:
        try:
            token = read_private(state.ray_token).decode().strip()
            resp = requests.get(
                f"http://{HEAD_ADDRESS}:{run.ports.dashboard}/api/version",
                headers={"Authorization": f"Bearer {token}"},
                timeout=3,
            )
            dashboard_ok = resp.status_code == 200
        except requests.RequestException:
            dashboard_ok = False
    gateway_ok = gateway_up and gateway_answers(gateway_url(config) + "/api/version", state)
    workers = _gateway_workers(state) if gateway_up else []
    prom_up = run is not None and run.prometheus_pid is not None and alive(run.prometheus_pid)
    prom_ok = (
        prom_up and run is not None and run.prometheus_port is not None and prometheus.is_ready(run.prometheus_port)
    )
    now = dt.datetime.now(dt.timezone.utc)
    certs = {}
    for name, path in (
        ("access_ca", state.access_ca_cert),
        ("internal_ca", state.internal_ca_cert),
        ("gateway", state.gateway_cert),
        ("node", state.node_cert),
    ):
        cert = load_cert(path)
        certs[name] = {
            "not_after": cert.not_valid_after_utc.isoformat(),
            "days_left": round((cert.not_valid_after_utc - now).total_seconds() / 86400, 2),
        }
    exposed = {}
    if ray_up:
        exposed = {str(p): a for p, a in ray_listeners(state).items() if not is_loopback(a)}
    return {
        "state_dir": str(state.root),
        "trust_domain": config.trust_domain,
        "gateway_url": gateway_url(config),
        "gateway": {
            "running": gateway_up,
            "healthy": gateway_ok,
            "listen": str(config.listen),
            "pid": run.gateway_pid if run else None,
            "workers": workers,
            "metrics_url": metrics_url(run.gateway_metrics_port) if run and run.gateway_metrics_port else None,
        },
        "serve": _serve_status(config, run),
        "ray": {
            "running": ray_up,
            "healthy": dashboard_ok,
            "pid": run.ray_pid if run else None,
            "os_user": run.ray_user if run else config.ray_user,
            "os_uid": run.ray_uid if run else None,
            "shares_control_plane_user": not config.separated,
            "node_ip": run.node_ip if run else None,
            "dashboard": f"http://{HEAD_ADDRESS}:{run.ports.dashboard}" if run else None,
            "non_loopback_listeners": exposed,
            "firewall": run.firewall if run else None,
        },
        "metrics": {
            "running": prom_up,
            "healthy": prom_ok,
            "pid": run.prometheus_pid if run else None,
            "url": prometheus.url(run.prometheus_port) if run and run.prometheus_port else None,
            "status": run.metrics if run else None,
        },
        "fingerprints": {
            "access_ca": fingerprint(load_cert(state.access_ca_cert)),
            "internal_ca": fingerprint(load_cert(state.internal_ca_cert)),
        },
        "certificates": certs,
        "audit_public_key": audit_public_key_pem(state.audit_key),
        "tls": {"minimum_version": ssl.TLSVersion.TLSv1_2.name},
    }

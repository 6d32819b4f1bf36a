"""Run the gateway: a supervisor (gateway/supervisor.py) and its worker processes (gateway/worker.py), each
serving the app built here; ``build_app`` alone is one process's gateway, as the offline tests use it."""

from __future__ import annotations

import argparse
import logging
import ssl
from pathlib import Path

import uvicorn

from raywarden.audit import AuditLog
from raywarden.audit.cluster import open_cluster_audit
from raywarden.config import ClusterConfig
from raywarden.errors import ConfigError, RaywardenError
from raywarden.files import ensure_private_dir, read_private
from raywarden.gateway import owner_seal
from raywarden.gateway.app import GatewayApp
from raywarden.gateway.auditsink import AuditSink, LocalAudit
from raywarden.gateway.authn import Authenticator
from raywarden.gateway.control import ControlServices, build_handlers
from raywarden.gateway.heads import ProtocolRefusals
from raywarden.gateway.protocols import listener_config
from raywarden.gateway.telemetry import upstream_error
from raywarden.gateway.upstream import Upstream
from raywarden.gateway.web import WebServices
from raywarden.identity.store import IdentityStore
from raywarden.policy.engine import PolicyEngine
from raywarden.secret import Secret
from raywarden.state import StateDir

log = logging.getLogger("raywarden.gateway")


def build_app(
    state: StateDir,
    dashboard_url: str,
    prometheus_url: str | None = None,
    *,
    audit: AuditSink | None = None,
    engine: PolicyEngine | None = None,
    shared: bool = False,
) -> tuple[GatewayApp, AuditLog | None]:
    """The app of one gateway process. Without ``audit`` it opens the cluster's log itself (returned, for
    the caller to close) and loads the policy set, recording the load; a worker passes both (its supervisor's
    audit writer and policy set). ``shared``: several workers serve together, so names are held across them."""
    config = state.load_config()
    log_opened: AuditLog | None = None
    if audit is None:
        log_opened = open_cluster_audit(state, config)
        audit = LocalAudit(log_opened)
    if engine is None:
        if log_opened is None:
            raise ConfigError("a gateway worker needs its policy set from the supervisor")
        engine = load_policies(state, log_opened)
    owner_seal.install(owner_seal.OwnerSeal.for_state(state))
    token = Secret(read_private(state.ray_token).decode().strip())
    store = IdentityStore.open(state.identity_db)
    ensure_private_dir(state.run_dir)
    app = GatewayApp(
        authenticator=Authenticator.from_state(state, config, store),
        engine=engine,
        audit=audit,
        upstream=Upstream(dashboard_url, token, config.upstream_timeout_s, on_error=upstream_error),
        control=build_handlers(ControlServices(state, config, store, audit)),
        max_body_bytes=config.max_body_bytes,
        max_filtered_bytes=config.max_filtered_answer_bytes,
        run_dir=state.run_dir,
        shared_locks=shared,
        web=WebServices.for_gateway(state, config, store, prometheus_url),
    )
    return app, log_opened


def load_policies(state: StateDir, audit: AuditLog) -> PolicyEngine:
    """The state dir's policy set, its load recorded (refused whole when it does not validate)."""
    try:
        engine = PolicyEngine.for_state(state)
    except RaywardenError as exc:
        audit.append({"kind": "policy", "event": "load", "accepted": False, "reason": exc.message})
        raise
    audit.append(
        {
            "kind": "policy",
            "event": "load",
            "accepted": True,
            "version": engine.version,
            "sources": list(engine.sources),
        }
    )
    return engine


def server_config(app: GatewayApp, config: ClusterConfig, tls: ssl.SSLContext, http: str = "auto") -> uvicorn.Config:
    """uvicorn's settings for the gateway's API listener."""
    refusals = ProtocolRefusals(app.audit, lambda: app.engine)
    return listener_config(app, config.listen, config, tls, refusals, http)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m raywarden.gateway", description="Run the raywarden gateway.")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--dashboard-url", required=True)
    parser.add_argument("--prometheus-url", help="the cluster's Prometheus, for Ray's Metrics page (optional)")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (default: one per core)")
    parser.add_argument("--metrics-port", type=int, help="loopback port for the gateway's own metrics")
    parser.add_argument("--serve-url", help="Ray Serve's HTTP proxy on loopback, behind the Serve listener (optional)")
    parser.add_argument("--worker-fds", help=argparse.SUPPRESS)  # set by the supervisor for its workers
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state = StateDir(args.state_dir)
    try:
        if args.worker_fds:
            from raywarden.gateway.worker import WorkerFds, run_worker

            fds = WorkerFds.parse(args.worker_fds)
            run_worker(state, args.dashboard_url, args.prometheus_url, fds, args.serve_url)
        else:
            from raywarden.gateway.supervisor import Supervisor

            Supervisor(
                state, args.dashboard_url, args.prometheus_url, args.workers, args.metrics_port, args.serve_url
            ).run()
    except RaywardenError as exc:
        log.error("%s", exc.diagnostics())
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

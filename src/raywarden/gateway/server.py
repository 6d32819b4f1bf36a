"""Run the gateway process: load state, keys and policies, serve HTTPS until told to stop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
from pathlib import Path

import uvicorn

from raywarden.audit import AuditLog
from raywarden.audit.cluster import open_cluster_audit
from raywarden.errors import RaywardenError
from raywarden.files import read_private
from raywarden.gateway.app import GatewayApp
from raywarden.gateway.authn import Authenticator
from raywarden.gateway.control import ControlServices, build_handlers
from raywarden.gateway.serve.server import beside, serve_alongside
from raywarden.gateway.tls import PeerCertProtocol, server_context
from raywarden.gateway.upstream import Upstream
from raywarden.gateway.web import WebServices
from raywarden.identity.store import IdentityStore
from raywarden.policy.engine import PolicyEngine
from raywarden.secret import Secret
from raywarden.state import ClusterConfig, StateDir

log = logging.getLogger("raywarden.gateway")


def build_app(state: StateDir, dashboard_url: str, prometheus_url: str | None = None) -> tuple[GatewayApp, AuditLog]:
    config = state.load_config()
    audit = open_cluster_audit(state, config)
    try:
        engine = PolicyEngine.for_state(state)
    except RaywardenError as exc:
        audit.append({"kind": "policy", "event": "load", "accepted": False, "reason": exc.message})
        audit.close()
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
    token = Secret(read_private(state.ray_token).decode().strip())
    store = IdentityStore.open(state.identity_db)
    app = GatewayApp(
        authenticator=Authenticator.from_state(state, config, store),
        engine=engine,
        audit=audit,
        upstream=Upstream(dashboard_url, token, config.upstream_timeout_s),
        control=build_handlers(ControlServices(state, config, store, audit)),
        max_body_bytes=config.max_body_bytes,
        web=WebServices.for_gateway(state, config, store, prometheus_url),
    )
    return app, audit


def server_config(app: GatewayApp, config: ClusterConfig, tls: ssl.SSLContext) -> uvicorn.Config:
    """uvicorn's settings for the gateway. Forwarded headers (X-Forwarded-For, -Proto) choose the client's
    address only on connections from ``trusted_proxies``; by default none is trusted, whatever uvicorn's own
    defaults (loopback) or FORWARDED_ALLOW_IPS say."""
    uv_config = uvicorn.Config(
        app,
        host=config.listen.host,
        port=config.listen.port,
        http=PeerCertProtocol,
        ws="wsproto",
        lifespan="on",
        access_log=False,
        server_header=False,
        date_header=True,
        log_level="warning",
        timeout_graceful_shutdown=10,
        proxy_headers=bool(config.trusted_proxies),
        forwarded_allow_ips=list(config.trusted_proxies),
    )
    uv_config.load()
    uv_config.ssl = tls  # uvicorn builds a context only from file paths: ours verifies client certificates
    return uv_config


def serve(state: StateDir, dashboard_url: str, prometheus_url: str | None = None, serve_url: str | None = None) -> None:
    config = state.load_config()
    app, audit = build_app(state, dashboard_url, prometheus_url)
    pending: set[asyncio.Task[int]] = set()

    def audit_handshake_refusal(reason: str) -> None:
        # Called on the event loop while it handles the handshake; the record is group-committed.
        task = asyncio.get_running_loop().create_task(
            audit.append_async({"kind": "tls", "event": "handshake_refused", "decision": "deny", "reason": reason})
        )
        pending.add(task)
        task.add_done_callback(pending.discard)

    tls = server_context(state, on_refused=audit_handshake_refusal)
    server = uvicorn.Server(server_config(app, config, tls))
    serve_server = beside(state, app, audit, dashboard_url, serve_url, tls)  # Ray Serve's listener (docs/serve.md)
    audit.append({"kind": "gateway", "event": "start", "listen": str(config.listen)})

    async def run() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: _reload_policies(app, state, audit))
        await serve_alongside(server, serve_server)

    try:
        asyncio.run(run())
    finally:
        audit.append({"kind": "gateway", "event": "stop"})
        audit.close()


def _reload_policies(app: GatewayApp, state: StateDir, audit: AuditLog) -> None:
    """SIGHUP: swap in a new policy set only if it loads and validates whole."""
    try:
        engine = PolicyEngine.for_state(state)
    except RaywardenError as exc:
        log.error("policy reload refused, keeping version %s: %s", app.engine.version, exc.message)
        audit.append(
            {
                "kind": "policy",
                "event": "reload",
                "accepted": False,
                "reason": exc.message,
                "version": app.engine.version,
            }
        )
        return
    app.engine = engine
    audit.append({"kind": "policy", "event": "reload", "accepted": True, "version": engine.version})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m raywarden.gateway", description="Run the raywarden gateway.")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--dashboard-url", required=True)
    parser.add_argument("--prometheus-url", help="the cluster's Prometheus, for Ray's Metrics page (optional)")
    parser.add_argument("--serve-url", help="Ray Serve's HTTP proxy on loopback, behind the Serve listener (optional)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        serve(StateDir(args.state_dir), args.dashboard_url, args.prometheus_url, args.serve_url)
    except RaywardenError as exc:
        log.error("%s", exc.diagnostics())
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

"""The Serve listener's HTTPS server, run in the gateway process next to the API listener (gateway/server.py):
same TLS context and certificate, same identity store, audit log and policy set, its own port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import uvicorn

from raywarden.config import ClusterConfig
from raywarden.files import read_private
from raywarden.gateway.app import GatewayApp
from raywarden.gateway.auditsink import AuditSink
from raywarden.gateway.authn import Authenticator
from raywarden.gateway.heads import ProtocolRefusals
from raywarden.gateway.protocols import listener_config
from raywarden.gateway.serve.callers import ServeAuthenticator
from raywarden.gateway.serve.control import ServeControl
from raywarden.gateway.serve.limits import LimitStore
from raywarden.gateway.serve.listener import ListenerServices, ServeListener
from raywarden.gateway.serve.proxy import ServeProxy
from raywarden.gateway.serve.table import AppTable, Pinned
from raywarden.gateway.upstream import Upstream
from raywarden.identity.apikeys import ApiKeys
from raywarden.identity.serveapps import ServeAppOwners
from raywarden.policy.engine import PolicyEngine
from raywarden.secret import Secret
from raywarden.state import StateDir

LIMITS_FILE = "serve-limits.db"


def build_listener(
    state: StateDir,
    config: ClusterConfig,
    audit: AuditSink,
    authenticator: Authenticator,
    engine: Callable[[], PolicyEngine],
    dashboard_url: str,
    serve_url: str,
) -> ServeListener:
    """The Serve listener's app. ``serve_url``: Serve's HTTP proxy on loopback, as `up` pinned it."""
    parts = urlsplit(serve_url)
    pinned = Pinned(parts.hostname or "127.0.0.1", parts.port or 80)

    async def on_drift(drift: str | None) -> None:
        event = "drift" if drift else "pinned"
        await audit.append_async({"kind": "serve", "event": event, "detail": drift, "serve_url": serve_url})

    async def on_replaced(names: list[str]) -> None:
        # Their owners' callers are refused from now on; a deploy through the gateway restores them.
        await audit.append_async({"kind": "serve", "event": "app_replaced", "apps": names, "serve_url": serve_url})

    token = Secret(read_private(state.ray_token).decode().strip())
    table = AppTable(
        serve_url,
        Upstream(dashboard_url, token, config.upstream_timeout_s),
        ServeAppOwners(authenticator.store),
        pinned,
        on_drift,
        on_replaced,
    )
    services = ListenerServices(
        authenticator=ServeAuthenticator(authenticator, ApiKeys(authenticator.store)),
        audit=audit,
        table=table,
        limits=LimitStore(state.run_dir / LIMITS_FILE),
        limit_config=config.serve_limits,
        proxy=ServeProxy(serve_url, config.serve_idle_timeout_s, config.serve_max_duration_s),
        max_body_bytes=config.serve_max_body_bytes,
    )
    return ServeListener(services, engine)


class _SignalsElsewhere(uvicorn.Server):
    """The API listener's server handles SIGTERM and SIGINT for the process; this one stops with it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def server_for(listener: ServeListener, config: ClusterConfig, tls: ssl.SSLContext) -> uvicorn.Server:
    if config.serve_listen is None:
        raise ValueError("no serve_listen in the cluster config")
    # The same read deadlines and connection bound as the API listener: a slow client is no cheaper here.
    refusals = ProtocolRefusals(listener.s.audit, listener.engine, listener="serve")
    uv_config = listener_config(listener, config.serve_listen, config, tls, refusals)
    return _SignalsElsewhere(uv_config)


async def serve_alongside(
    api: uvicorn.Server,
    api_sockets: list[socket.socket],
    serve: uvicorn.Server | None,
    serve_socket: socket.socket | None,
) -> None:
    """Run the API listener, and the Serve listener next to it until the API listener stops. Both serve
    sockets the supervisor bound once for every worker."""
    if serve is None or serve_socket is None:
        await api.serve(sockets=api_sockets)
        return
    task = asyncio.get_running_loop().create_task(serve.serve(sockets=[serve_socket]))
    try:
        await api.serve(sockets=api_sockets)
    finally:
        serve.should_exit = True
        await asyncio.gather(task, return_exceptions=True)


def beside(
    state: StateDir,
    app: GatewayApp,
    audit: AuditSink,
    dashboard_url: str,
    serve_url: str | None,
    tls: ssl.SSLContext,
) -> uvicorn.Server | None:
    """The Serve listener's server for the gateway process serving ``app``, or None when Serve is off."""
    config = state.load_config()
    if serve_url is None or config.serve_listen is None:
        return None
    listener = build_listener(
        state, config, audit, app.services.authenticator, lambda: app.engine, dashboard_url, serve_url
    )
    control = app.handlers.get("serve")
    if isinstance(control, ServeControl):  # deploys through the API listener pin Serve where this one expects it
        control.attach(listener.s.table.pinned, listener.s.table)
    return server_for(listener, config, tls)

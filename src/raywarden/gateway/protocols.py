"""uvicorn's HTTP protocols, handing the verified client certificate to the app (gateway/tls.py says why),
enforcing read deadlines and a connection bound (gateway/deadlines.py) and a bound on request heads, with
audited answers for what the parser refuses (gateway/heads.py).

httptools (C) parses HTTP/1.1 when it is installed and is what the gateway runs; h11 (pure Python) is the
fallback. Both give the app the same scope."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from raywarden.config import ClusterConfig, Listen
from raywarden.gateway.deadlines import ReadDeadlines, ReadLimits
from raywarden.gateway.heads import HeadLimit, ProtocolRefusals
from raywarden.gateway.tls import PEER_CERT_STATE_KEY, PeerCertProtocol

DEFAULT_LIMITS = ReadDeadlines.limits


def _httptools() -> type[Any] | None:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is not installed
        return None

    class PeerCertHttpTools(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            ssl_object: Any = transport.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            self.app_state: dict[str, Any] = {**self.app_state, PEER_CERT_STATE_KEY: der}

    return PeerCertHttpTools


def http_protocol(
    parser: str = "auto", limits: ReadLimits = DEFAULT_LIMITS, refusals: ProtocolRefusals | None = None
) -> type[Any]:
    """The protocol class for ``parser`` ("httptools", "h11" or "auto": httptools when installed). Without
    ``refusals``, what the protocol refuses is answered and logged but not audited (tests only)."""
    httptools = _httptools() if parser != "h11" else None
    if httptools is None and parser == "httptools":
        raise ImportError("httptools is not installed")
    base = httptools or PeerCertProtocol
    fields = {"limits": limits, "refusals": refusals, "count_heads": httptools is not None}
    return type(f"Deadline{base.__name__}", (HeadLimit, base), fields)


def read_limits(config: ClusterConfig) -> ReadLimits:
    return ReadLimits(
        header_seconds=config.gateway_header_timeout_seconds,
        body_idle_seconds=config.gateway_body_idle_seconds,
        max_connections=config.gateway_max_connections,
    )


def listener_config(
    app: ASGIApp,
    listen: Listen,
    config: ClusterConfig,
    tls: ssl.SSLContext,
    refusals: ProtocolRefusals,
    http: str = "auto",
) -> uvicorn.Config:
    """uvicorn's settings for one of the gateway's listeners (the API's, or Serve's): the same protocol, read
    deadlines, head bound and TLS context; ``refusals`` records what the protocol refuses before the app.
    Forwarded headers (X-Forwarded-For, -Proto) choose the client's address only on connections from
    ``trusted_proxies``; by default none is trusted, whatever uvicorn's own defaults (loopback) or
    FORWARDED_ALLOW_IPS say."""
    limits = read_limits(config)
    uv_config = uvicorn.Config(
        app,
        host=listen.host,
        port=listen.port,
        http=http_protocol(http, limits, refusals),
        h11_max_incomplete_event_size=limits.head_bytes,  # h11 bounds heads itself (gateway/heads.py)
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

"""uvicorn's HTTP protocols, handing the verified client certificate to the app (gateway/tls.py says why) and
enforcing read deadlines and a connection bound (gateway/deadlines.py).

httptools (C) parses HTTP/1.1 when it is installed and is what the gateway runs; h11 (pure Python) is the
fallback. Both give the app the same scope."""

from __future__ import annotations

import asyncio
from typing import Any

from raywarden.gateway.deadlines import ReadDeadlines, ReadLimits
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


def http_protocol(parser: str = "auto", limits: ReadLimits = DEFAULT_LIMITS) -> type[Any]:
    """The protocol class for ``parser`` ("httptools", "h11" or "auto": httptools when installed)."""
    httptools = _httptools() if parser != "h11" else None
    if httptools is None and parser == "httptools":
        raise ImportError("httptools is not installed")
    base = httptools or PeerCertProtocol
    return type(f"Deadline{base.__name__}", (ReadDeadlines, base), {"limits": limits})

"""The gateway's TLS: TLS 1.2+, client certificates optional but verified against the access CA only."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from raywarden.state import StateDir

# Where the connection's verified client certificate (DER, or None) is in every request scope's "state".
PEER_CERT_STATE_KEY = "raywarden.peer_cert_der"


def server_context(state: StateDir, on_refused: Callable[[str], None] | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(state.gateway_cert, state.gateway_key)
    # Only the access CA: a node certificate (internal CA) or a foreign CA fails the handshake.
    ctx.load_verify_locations(cafile=str(state.access_ca_cert))
    # Optional at the TLS layer so bearer tokens also work; the app refuses requests without either.
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if on_refused is not None:
        ctx.sslobject_class = _reporting_sslobject(on_refused)
    return ctx


def _reporting_sslobject(on_refused: Callable[[str], None]) -> type[ssl.SSLObject]:
    """asyncio drops server-side handshake failures silently; this reports each one (a foreign CA, an
    expired certificate, a node certificate...) so that it can be audited."""

    class ReportingSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except ssl.SSLError as exc:
                on_refused(str(getattr(exc, "verify_message", None) or exc.reason or exc))
                raise

    return ReportingSSLObject


class PeerCertProtocol(H11Protocol):
    """uvicorn does not implement the ASGI TLS extension, so hand the verified peer certificate to the
    app through the per-connection state that uvicorn copies into every request scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object: Any = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self.app_state = {**self.app_state, PEER_CERT_STATE_KEY: der}

"""The gateway's TLS: TLS 1.2+, client certificates optional but verified against the access CA only.

The certificate is swapped in place: ``server_context`` returns a context whose ``sni_callback`` (run for
every ClientHello, with or without SNI) notices new files (a renewed certificate, a new access-CA bundle),
builds a complete new context from them, checks it, and hands it to the connection being set up. Connections
already open keep the context they started with; a context is never changed after it is built, so a file
that fails to load leaves the gateway serving the last good one. Session tickets stay those of the first
context (OpenSSL keeps them with the context a connection started on), so a session resumed after a change of
CAs carries a client certificate verified before it: every request checks its issuer against the access CAs
trusted now (gateway/access_trust.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from uvicorn.protocols.http.h11_impl import H11Protocol

from raywarden.cluster import pkilock
from raywarden.errors import PKIError
from raywarden.pki.certs import load_cert, serial_hex, spiffe_id_of
from raywarden.state import StateDir, trusted_ca_file

log = logging.getLogger("raywarden.gateway")

# Where the connection's verified client certificate (DER, or None) is in every request scope's "state".
PEER_CERT_STATE_KEY = "raywarden.peer_cert_der"
# How often a handshake may look at the files (three stat calls); new connections see a renewed certificate
# within this long of it being written.
CHECK_INTERVAL_S = 1.0

Reload = Callable[[dict[str, Any]], None]
Refused = Callable[[str], None]
FileSignature = tuple[tuple[str, int, int, int] | None, ...]


def server_context(
    state: StateDir, on_refused: Refused | None = None, on_reload: Reload | None = None
) -> ssl.SSLContext:
    """The context to serve with. It keeps itself current: see the module docstring. ``on_refused`` hears
    of every failed handshake, ``on_reload`` of every swap attempt (its audit fields)."""
    holder = TlsContextHolder(state, on_reload)
    base = holder.current
    if on_refused is not None:
        base.sslobject_class = _reporting_sslobject(on_refused)

    def select(sslobj: ssl.SSLObject, _server_name: str | None, _ctx: ssl.SSLContext) -> None:
        try:
            holder.refresh()
            if holder.current is not base:
                # OpenSSL's SSL_set_SSL_CTX: this connection takes the certificate, key and client-CA store
                # of the current context.
                sslobj.context = holder.current
        except Exception:  # a failed refresh must never fail the handshake: serve the last good context
            log.exception("TLS context refresh failed; serving the previous certificate")

    base.sni_callback = select
    return base


def build_context(state: StateDir) -> tuple[ssl.SSLContext, x509.Certificate]:
    """A complete context from the files as they are now, and the certificate it serves. Raises PKIError or
    ssl.SSLError when they do not make a usable gateway (a key that does not match, an expired certificate,
    one not issued by a trusted access CA, one that is not the gateway's)."""
    ca_file = trusted_ca_file(state, "access")
    cert = load_cert(state.gateway_cert)
    _check_gateway_certificate(cert, ca_file)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(state.gateway_cert, state.gateway_key)
    # Only the access CA(s): a node certificate (internal CA) or a foreign CA fails the handshake.
    ctx.load_verify_locations(cafile=str(ca_file))
    # Optional at the TLS layer so bearer tokens also work; the app refuses requests without either.
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx, cert


def _check_gateway_certificate(cert: x509.Certificate, ca_file: Path) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        raise PKIError(f"gateway certificate {serial_hex(cert)} is not valid now (until {cert.not_valid_after_utc})")
    if spiffe_id_of(cert).kind != "gateway":
        raise PKIError(f"{spiffe_id_of(cert)} is not the gateway's identity")
    for ca in x509.load_pem_x509_certificates(ca_file.read_bytes()):
        try:
            cert.verify_directly_issued_by(ca)
            return
        except (ValueError, TypeError, InvalidSignature):
            continue
    raise PKIError(f"gateway certificate {serial_hex(cert)} is not issued by a trusted access CA ({ca_file})")


class TlsContextHolder:
    """The current context of one gateway process, rebuilt whole when the files it came from change."""

    def __init__(self, state: StateDir, on_reload: Reload | None = None) -> None:
        self.state = state
        self.on_reload = on_reload
        with pkilock.holding(state.renewal_lock, shared=True):
            self._signature = self._files_signature()
            # At start-up a broken certificate is fatal (fail closed); later it only keeps the old one.
            self.current, self.certificate = build_context(state)
        self._next_check = time.monotonic() + CHECK_INTERVAL_S
        self._failed: FileSignature | None = None

    @property
    def serial(self) -> str:
        return serial_hex(self.certificate)

    def _files_signature(self) -> FileSignature:
        found: list[tuple[str, int, int, int] | None] = []
        for path in (self.state.gateway_cert, self.state.gateway_key, trusted_ca_file(self.state, "access")):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                found.append(None)
                continue
            found.append((str(path), st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(found)

    def refresh(self, *, force: bool = False) -> bool:
        """Swap in a new context if the files changed and make a good one. Returns whether it swapped."""
        now = time.monotonic()
        if not force and now < self._next_check:
            return False
        self._next_check = now + CHECK_INTERVAL_S
        if self._files_signature() == self._signature:
            return False
        with pkilock.holding(self.state.renewal_lock, shared=True, blocking=False) as held:
            if not held:  # a key and its certificate are being written: look again at the next handshake
                self._next_check = now
                return False
            signature = self._files_signature()
            try:
                ctx, cert = build_context(self.state)
            except (OSError, ssl.SSLError, ValueError, PKIError) as exc:
                reason = exc.message if isinstance(exc, PKIError) else str(exc)
                if signature != self._failed:  # once per set of files, not once per handshake
                    self._failed = signature
                    log.error("new TLS material refused, still serving %s: %s", self.serial, reason)
                    self._report({"accepted": False, "serial": self.serial, "reason": reason})
                return False
        old = self.serial
        self.current, self.certificate, self._signature, self._failed = ctx, cert, signature, None
        log.info("TLS context swapped in: certificate %s replaces %s", self.serial, old)
        self._report(
            {
                "accepted": True,
                "old_serial": old,
                "serial": self.serial,
                "not_after": cert.not_valid_after_utc.isoformat(),
            }
        )
        return True

    def _report(self, fields: dict[str, Any]) -> None:
        if self.on_reload is not None:
            self.on_reload({**fields, "pid": os.getpid()})


def _reporting_sslobject(on_refused: Refused) -> type[ssl.SSLObject]:
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

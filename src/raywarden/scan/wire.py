"""The only bytes the scanner puts on the wire: TCP connects, TLS ClientHellos, HTTP/1.1 GETs, HTTP/2 prefaces."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from raywarden import __version__
from raywarden.errors import RaywardenError

USER_AGENT = f"raywarden-scan/{__version__}"
# Enough for a Prometheus page's first metrics or a few thousand job records; the rest is not read.
MAX_RESPONSE = 1 << 20
# RFC 9113 section 3.4: the client connection preface, then a SETTINGS frame (here with no
# parameters). A server that speaks HTTP/2 (every gRPC server) answers with its own SETTINGS frame.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
H2_FRAME_SETTINGS = 0x4

_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3})(?: ([^\r\n]*))?$")
# OpenSSL reasons meaning "the peer is not speaking TLS at all".
_NOT_TLS_REASONS = (
    "WRONG_VERSION_NUMBER",
    "RECORD_LAYER_FAILURE",
    "PACKET_LENGTH_TOO_LONG",
    "HTTP_REQUEST",
    "UNEXPECTED_RECORD",
    "UNEXPECTED_MESSAGE",
    "UNKNOWN_PROTOCOL",
)
_CERT_REQUIRED_REASONS = ("CERTIFICATE_REQUIRED", "PEER_DID_NOT_RETURN_A_CERTIFICATE")


class NotHttpError(RaywardenError):
    """The peer answered, but not with HTTP/1.x; ``first`` holds its first bytes."""

    def __init__(self, first: bytes) -> None:
        super().__init__(f"not an HTTP/1.x response: {first[:16]!r}")
        self.first = first


class ClientCertRequiredError(RaywardenError):
    """The TLS peer refused to go on without a client certificate."""


@dataclass
class TlsInfo:
    """Outcome of one TLS handshake attempt made without a client certificate."""

    tls: bool
    version: str | None = None
    alpn: str | None = None
    cipher: str | None = None
    client_cert_required: bool = False
    error: str | None = None
    verified: bool | None = None
    verify_error: str | None = None


@dataclass
class HttpResponse:
    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    truncated: bool = False

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


def request_bytes(netloc: str, path: str) -> bytes:
    """The complete HTTP request the scanner sends: no credentials, cookies, Origin or Referer."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {netloc}\r\nUser-Agent: {USER_AGENT}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    ).encode("ascii")


def tls_context(*, alpn: list[str], ca: Path | None = None) -> ssl.SSLContext:
    """A client context that never presents a certificate; it verifies only when ``ca`` is given."""
    if ca is None:
        # Deliberately unverified: the probe asks "does it speak TLS, and does it demand a client
        # certificate?", which is independent of whether its certificate chain is trusted.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(alpn)
    return ctx


def _ssl_reason(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc.strerror or exc).upper()


def _is_cert_required(exc: ssl.SSLError) -> bool:
    reason = _ssl_reason(exc)
    return any(r in reason for r in _CERT_REQUIRED_REASONS)


async def _close(writer: asyncio.StreamWriter, timeout: float) -> None:
    # Abort rather than close: everything was sent and read already, and a graceful TLS close waits
    # for the peer's close_notify, which gRPC servers never send, stalling each probe a full timeout.
    writer.transport.abort()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), timeout)


@contextlib.asynccontextmanager
async def _connect(
    host: str, port: int, timeout: float, ctx: ssl.SSLContext | None, sni: str | None
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    if ctx is None:
        conn = asyncio.open_connection(host, port)
    else:
        conn = asyncio.open_connection(host, port, ssl=ctx, server_hostname=sni or "", ssl_handshake_timeout=timeout)
    reader, writer = await asyncio.wait_for(conn, timeout)
    try:
        yield reader, writer
    finally:
        await _close(writer, timeout)


async def tcp_open(host: str, port: int, timeout: float) -> None:
    """Connect and close at once; raises OSError or asyncio.TimeoutError when nothing accepts."""
    async with _connect(host, port, timeout, None, None):
        pass


async def tls_probe(host: str, port: int, timeout: float, *, sni: str | None, ca: Path | None) -> TlsInfo:
    """Send a TLS ClientHello (ALPN h2, http/1.1; no client certificate) and report what came back."""
    ctx = tls_context(alpn=["h2", "http/1.1"])
    try:
        async with _connect(host, port, timeout, ctx, sni) as (_, writer):
            ssl_object = writer.get_extra_info("ssl_object")
            cipher = writer.get_extra_info("cipher")
            info = TlsInfo(
                tls=True,
                version=ssl_object.version() if ssl_object else None,
                alpn=ssl_object.selected_alpn_protocol() if ssl_object else None,
                cipher=cipher[0] if cipher else None,
            )
    except ssl.SSLError as exc:
        reason = _ssl_reason(exc)
        if any(r in reason for r in _NOT_TLS_REASONS):
            return TlsInfo(tls=False, error=reason)
        # A TLS 1.2 server that requires a client certificate aborts the handshake itself.
        return TlsInfo(
            tls=True, client_cert_required=_is_cert_required(exc) or "HANDSHAKE_FAILURE" in reason, error=reason
        )
    except (ConnectionError, asyncio.IncompleteReadError, EOFError) as exc:
        return TlsInfo(tls=False, error=f"connection closed during TLS handshake ({type(exc).__name__})")
    except asyncio.TimeoutError:
        return TlsInfo(tls=False, error="no TLS answer before the timeout")
    if ca is not None:
        info.verified, info.verify_error = await _verify(host, port, timeout, sni, ca)
    return info


async def _verify(host: str, port: int, timeout: float, sni: str | None, ca: Path) -> tuple[bool, str | None]:
    try:
        async with _connect(host, port, timeout, tls_context(alpn=["h2", "http/1.1"], ca=ca), sni or host):
            return True, None
    except ssl.SSLCertVerificationError as exc:
        return False, str(exc.verify_message or exc)
    except (ssl.SSLError, OSError, asyncio.TimeoutError) as exc:
        return False, f"{type(exc).__name__}: {exc}"


def _decode_chunked(body: bytes) -> tuple[bytes, bool]:
    out = bytearray()
    rest = body
    while True:
        line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            return bytes(out), True
        try:
            size = int(line.split(b";")[0].strip(), 16)
        except ValueError:
            return bytes(out), True
        if size == 0:
            return bytes(out), False
        if len(rest) < size:
            return bytes(out + rest), True
        out += rest[:size]
        rest = rest[size + 2 :]


def parse_response(data: bytes, *, capped: bool) -> HttpResponse:
    """Parse a complete (or capped) HTTP/1.x response read until the server closed the connection."""
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    match = _STATUS_LINE.match(lines[0])
    if not match:
        raise NotHttpError(data[:64])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if colon:
            headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    truncated = capped or not sep
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body, chunk_truncated = _decode_chunked(body)
        truncated = truncated or chunk_truncated
    elif headers.get("content-length", "").isdigit():
        length = int(headers["content-length"])
        truncated = truncated or len(body) < length
        body = body[:length]
    return HttpResponse(
        status=int(match.group(1)),
        reason=(match.group(2) or b"").decode("latin-1"),
        headers=headers,
        body=body,
        truncated=truncated,
    )


async def http_get(
    host: str, port: int, netloc: str, path: str, *, tls: bool, timeout: float, sni: str | None
) -> HttpResponse:
    """One GET with ``Connection: close``; reads at most MAX_RESPONSE bytes, then hangs up."""
    ctx = tls_context(alpn=["http/1.1"]) if tls else None

    async def exchange() -> tuple[bytes, bool]:
        async with _connect(host, port, timeout, ctx, sni) as (reader, writer):
            writer.write(request_bytes(netloc, path))
            await writer.drain()
            data = bytearray()
            while len(data) < MAX_RESPONSE:
                chunk = await reader.read(65536)
                if not chunk:
                    return bytes(data), False
                data += chunk
            return bytes(data[:MAX_RESPONSE]), True

    try:
        data, capped = await asyncio.wait_for(exchange(), timeout)
    except ssl.SSLError as exc:
        if _is_cert_required(exc):
            raise ClientCertRequiredError(_ssl_reason(exc)) from None
        raise
    if not data:
        raise NotHttpError(b"")
    return parse_response(data, capped=capped)


async def h2_settings_probe(host: str, port: int, *, tls: bool, timeout: float, sni: str | None) -> bytes:
    """Send the HTTP/2 client preface and an empty SETTINGS frame; return the first frame header seen.

    No stream is opened and no RPC is named, so the server has nothing to act on.
    """
    ctx = tls_context(alpn=["h2"]) if tls else None

    async def exchange() -> bytes:
        async with _connect(host, port, timeout, ctx, sni) as (reader, writer):
            writer.write(H2_PREFACE + H2_EMPTY_SETTINGS)
            await writer.drain()
            try:
                return await reader.readexactly(9)
            except asyncio.IncompleteReadError as exc:
                return exc.partial

    try:
        return await asyncio.wait_for(exchange(), timeout)
    except ssl.SSLError as exc:
        if _is_cert_required(exc):
            raise ClientCertRequiredError(_ssl_reason(exc)) from None
        raise


def is_h2_settings(frame_header: bytes) -> bool:
    """True for a 9-byte HTTP/2 frame header of type SETTINGS on stream 0 (RFC 9113 section 6.5)."""
    return (
        len(frame_header) >= 9
        and frame_header[3] == H2_FRAME_SETTINGS
        and int.from_bytes(frame_header[5:9], "big") & 0x7FFFFFFF == 0
    )

"""One TLS record per answer (gateway/coalesce.py): what uvicorn writes in one turn of the loop leaves together,
streamed answers still leave as they are written, and closing or aborting does what the transport would."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from raywarden.gateway.coalesce import CoalescingTransport
from raywarden.gateway.deadlines import ReadLimits
from raywarden.gateway.protocols import http_protocol

pytestmark = pytest.mark.unit
APPLICATION_DATA = 23


class Recorder(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_write_buffer_size(self) -> int:
        return 0


def test_writes_in_one_turn_leave_as_one_in_order() -> None:
    async def main() -> Recorder:
        inner = Recorder()
        outer = CoalescingTransport(inner, asyncio.get_running_loop())
        outer.write(b"HTTP/1.1 200 OK\r\n\r\n")
        outer.write(b"")
        outer.writelines([b"a", bytearray(b"b")])
        assert inner.writes == [] and outer.get_write_buffer_size() == 21
        await asyncio.sleep(0)
        outer.write(b"next turn")
        await asyncio.sleep(0)
        return inner

    assert asyncio.run(main()).writes == [b"HTTP/1.1 200 OK\r\n\r\nab", b"next turn"]


def test_close_hands_on_what_is_pending_and_abort_drops_it() -> None:
    async def main() -> tuple[Recorder, Recorder]:
        loop = asyncio.get_running_loop()
        closed, aborted = Recorder(), Recorder()
        one, two = CoalescingTransport(closed, loop), CoalescingTransport(aborted, loop)
        one.write(b"last words")
        one.close()
        two.write(b"never sent")
        two.abort()
        await asyncio.sleep(0)
        return closed, aborted

    closed, aborted = asyncio.run(main())
    assert closed.writes == [b"last words"] and closed.closed
    assert aborted.writes == [] and aborted.aborted


# -- through uvicorn, over TLS 1.2 (no post-handshake records), as a client sees the bytes --------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "coalesce-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await receive()
    if scope["path"] == "/stream":  # three chunks, a pause between them: each is sent when written
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"15")]})
        for i in range(3):
            await send({"type": "http.response.body", "body": b"chunk", "more_body": i < 2})
            await asyncio.sleep(0.05)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
    await send({"type": "http.response.body", "body": b"hello", "more_body": True})
    await send({"type": "http.response.body", "body": b"world"})


@pytest.fixture(params=["httptools", "h11"])
def port(request: pytest.FixtureRequest, tls_files: tuple[Path, Path]) -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    limits = ReadLimits(header_seconds=5.0, body_idle_seconds=5.0, max_connections=8)
    config = uvicorn.Config(app, http=http_protocol(request.param, limits), lifespan="off", log_level="warning")
    config.load()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.maximum_version = ssl.TLSVersion.TLSv1_2
    tls.load_cert_chain(tls_files[0], tls_files[1])
    config.ssl = tls
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(10)


def records_of_answer(port: int, path: str, cafile: Path) -> tuple[list[tuple[int, float]], bytes]:
    """The TLS records the answer to ``GET path`` came in (type, arrival time), and the answer decrypted."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        sock.sendall(outgoing.read())
        tls.write(f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n".encode())
        sock.sendall(outgoing.read())
        raw, records, answer = b"", [], b""
        while not complete(answer) and (chunk := sock.recv(65536)):
            raw += chunk
            while len(raw) >= 5 and len(raw) >= 5 + int.from_bytes(raw[3:5], "big"):
                size = 5 + int.from_bytes(raw[3:5], "big")
                records.append((raw[0], time.monotonic()))
                incoming.write(raw[:size])
                raw = raw[size:]
                try:
                    answer += tls.read(65536)
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    pass
    return [r for r in records if r[0] == APPLICATION_DATA], answer


def complete(answer: bytes) -> bool:
    """The whole answer is in: its headers and as many bytes of body as they announce."""
    head, found, body = answer.partition(b"\r\n\r\n")
    if not found:
        return False
    length = next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return len(body) >= int(length)


def test_an_answer_leaves_in_one_tls_record(port: int, tls_files: tuple[Path, Path]) -> None:
    records, answer = records_of_answer(port, "/", tls_files[0])
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"\r\n\r\nhelloworld")
    assert len(records) == 1


def test_a_streamed_answer_leaves_chunk_by_chunk(port: int, tls_files: tuple[Path, Path]) -> None:
    records, answer = records_of_answer(port, "/stream", tls_files[0])
    assert answer.endswith(b"\r\n\r\nchunkchunkchunk")
    assert len(records) == 3  # the headers with the first chunk, then one record per chunk as it is written
    assert records[2][1] - records[0][1] >= 0.08  # not held back until the end

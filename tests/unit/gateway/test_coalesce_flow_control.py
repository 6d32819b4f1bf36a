"""Write flow control through the one-record-per-answer wrapper (gateway/coalesce.py): an answer streamed by an
app that awaits only ``send`` must stop at the transport's high-water mark while the peer does not read, as it
does without the wrapper; otherwise an anonymous peer that never reads makes the worker hold the whole answer."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from raywarden.gateway import heads
from raywarden.gateway.deadlines import ReadLimits
from raywarden.gateway.protocols import http_protocol
from tests.unit.gateway.test_coalesce import tls_files  # noqa: F401  (fixture)

pytestmark = pytest.mark.unit
CHUNK = 64 * 1024
CHUNKS = 320  # 20 MiB: well over what loopback socket buffers absorb
sent: dict[str, int] = {}


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await receive()
    key = scope["path"]
    sent[key] = 0
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(CHUNK * CHUNKS).encode())]}
    )
    body = b"x" * CHUNK
    for i in range(CHUNKS):  # from memory: nothing here yields to the loop but send itself
        await send({"type": "http.response.body", "body": body, "more_body": i < CHUNKS - 1})
        sent[key] = i + 1


@pytest.fixture(
    params=[("httptools", True), ("h11", True), ("httptools", False)], ids=lambda p: f"{p[0]}-wrapped={p[1]}"
)
def port(
    request: pytest.FixtureRequest,
    tls_files: tuple[Path, Path],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[int]:
    parser, wrapped = request.param
    if not wrapped:  # the behaviour before the wrapper, for comparison
        monkeypatch.setattr(heads, "CoalescingTransport", lambda transport, loop: transport)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    limits = ReadLimits(header_seconds=30.0, body_idle_seconds=30.0, max_connections=8)
    config = uvicorn.Config(app, http=http_protocol(parser, limits), lifespan="off", log_level="warning")
    config.load()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
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


def test_a_peer_that_does_not_read_stops_a_streamed_answer(port: int, tls_files: tuple[Path, Path]) -> None:  # noqa: F811
    ctx = ssl.create_default_context(cafile=str(tls_files[0]))
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", port))
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        path = f"/never-read-{port}"
        tls.sendall(f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".encode())
        deadline = time.monotonic() + 3.0  # generous: the app needs a moment to start, then should stall
        while time.monotonic() < deadline and sent.get(path, 0) < CHUNKS:
            time.sleep(0.1)
        # Not reading: a few chunks fit the buffers and the high-water mark, then send must wait.
        assert sent.get(path, 0) < CHUNKS // 2, (
            f"{sent.get(path)} of {CHUNKS} chunks accepted from a peer that reads nothing"
        )

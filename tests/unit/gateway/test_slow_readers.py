"""A peer that asks for an answer and never reads it (gateway/deadlines.py): once the answer has filled the
socket's buffers, the connection is busy for ever unless the answer has a deadline of its own. Enough such
connections (a few bytes of request each) would fill a worker's connection bound and refuse everyone else.
A real uvicorn server over loopback TCP, with the gateway's protocol class and an app with a large answer."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from raywarden.gateway.deadlines import CONNECTION_STATE_KEY, ReadLimits
from raywarden.gateway.protocols import http_protocol

pytestmark = pytest.mark.unit

LIMITS = ReadLimits(header_seconds=1.0, body_idle_seconds=1.0, max_connections=3)
CHUNK = 64 * 1024
ANSWER_BYTES = 128 * CHUNK  # 8 MiB: more than any socket buffer holds


class App:
    """``/big`` streams ANSWER_BYTES; anything else answers "ok". Records how each big answer ended."""

    def __init__(self) -> None:
        self.ended: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/big":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        length = str(ANSWER_BYTES).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]})
        for _ in range(ANSWER_BYTES // CHUNK):
            await send({"type": "http.response.body", "body": b"x" * CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        self.ended.append({"timed_out": scope["state"][CONNECTION_STATE_KEY].timed_out})


@pytest.fixture(params=["httptools", "h11"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[int, App]]:
    app = App()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, http=http_protocol(request.param, LIMITS), lifespan="off", log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(srv.serve(sockets=[sock])), daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.01)
    yield sock.getsockname()[1], app
    srv.should_exit = True
    thread.join(10)


def reader(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window from the start
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


def drain(s: socket.socket) -> tuple[int, bool]:
    """Bytes read until the server ended the connection, and whether it did (rather than the read timing out)."""
    total = 0
    try:
        while chunk := s.recv(CHUNK):
            total += len(chunk)
    except ConnectionResetError:
        return total, True
    except TimeoutError:
        return total, False
    return total, True


def test_an_answer_nobody_reads_is_cut_at_the_idle_deadline(server: tuple[int, App]) -> None:
    port, app = server
    with reader(port) as s:
        s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(LIMITS.body_idle_seconds * 3)  # read nothing
        received, ended = drain(s)
    assert ended, "the connection was still open"
    assert received < ANSWER_BYTES, "the whole answer went out"
    deadline = time.monotonic() + 5
    while not app.ended and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.ended == [{"timed_out": True}]


def test_stalled_readers_do_not_hold_the_connection_bound(server: tuple[int, App]) -> None:
    port, _ = server
    stalled = [reader(port) for _ in range(LIMITS.max_connections)]
    try:
        for s in stalled:
            s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(LIMITS.body_idle_seconds * 3)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as fresh:
            fresh.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert fresh.recv(CHUNK).startswith(b"HTTP/1.1 200 ")
    finally:
        for s in stalled:
            s.close()


def test_a_slow_reader_that_keeps_reading_gets_the_whole_answer(server: tuple[int, App]) -> None:
    port, app = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = 0
        started = time.monotonic()
        while chunk := s.recv(CHUNK):
            received += len(chunk)
            if time.monotonic() - started < LIMITS.body_idle_seconds * 3:
                time.sleep(0.02)  # slower than the server writes: its buffer fills, drains, fills
    assert received > ANSWER_BYTES, received  # the head and the whole body
    assert app.ended == [{"timed_out": False}]

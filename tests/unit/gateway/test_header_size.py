"""Request headers have a size bound, whatever parser the gateway runs (gateway/protocols.py).

Both listeners (API and Serve) take anonymous TLS peers: a client certificate is optional, so anyone who can
reach the port can send headers. The header deadline bounds how long they may take, not how many bytes they
are: with httptools (what the gateway runs) a header of many MiB is buffered whole and handed to the app, and
each worker holds up to gateway_max_connections such connections. h11, the fallback, stops at 16 KiB. A real
uvicorn server on loopback, with the gateway's protocol class and a small ASGI app.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from raywarden.gateway.deadlines import ReadLimits
from raywarden.gateway.protocols import http_protocol

pytestmark = pytest.mark.unit

LIMITS = ReadLimits(header_seconds=30.0, body_idle_seconds=30.0, max_connections=16)
HUGE = 4 * 1024 * 1024


class App:
    def __init__(self) -> None:
        self.header_bytes: list[int] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.header_bytes.append(sum(len(k) + len(v) for k, v in scope["headers"]))
        await send({"type": "http.response.start", "status": 401, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


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


def _send_huge_header(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        request = b"GET /api/version HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * HUGE + b"\r\nConnection: close\r\n\r\n"
        try:
            s.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the end: what a bound does
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


def test_a_header_of_megabytes_is_refused_before_the_app(server: tuple[int, App]) -> None:
    port, app = server
    answer = _send_huge_header(port)
    assert app.header_bytes == [], f"the app was handed {app.header_bytes[0]} bytes of headers"
    assert answer == b"" or answer.split(b" ", 2)[1] in (b"400", b"431"), answer[:200]

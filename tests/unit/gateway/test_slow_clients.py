"""Replays of the slowloris attack against the gateway's HTTP protocols (gateway/deadlines.py), on a real
uvicorn server over loopback TCP with a small ASGI app: headers trickled one byte at a time, a body that stalls,
and more connections than a worker holds."""

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


class App:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                mark = scope["state"][CONNECTION_STATE_KEY]
                self.seen.append({"disconnect": True, "timed_out": mark.timed_out, "received": len(body)})
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.seen.append({"disconnect": False, "received": len(body)})
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


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


_OPEN: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    _OPEN.append(s)
    return s


def read_all(s: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def test_headers_trickled_byte_by_byte_get_408_and_close(server: tuple[int, App]) -> None:
    port, app = server
    s = connect(port)
    request = b"GET /api/version HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    closed_after = None
    for i, byte in enumerate(request):
        try:
            s.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            closed_after = i
            break
        time.sleep(0.1)
        s.setblocking(False)
        try:
            if s.recv(65536, socket.MSG_PEEK):
                closed_after = i
                break
        except BlockingIOError:
            pass
        finally:
            s.setblocking(True)
    assert closed_after is not None and closed_after < 40  # the header deadline (1 s), not the request's end
    answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert app.seen == []  # no request reached the app


def test_silent_connection_after_connect_is_closed(server: tuple[int, App]) -> None:
    port, _ = server
    s = connect(port)
    assert read_all(s).startswith(b"HTTP/1.1 408 ")


def test_next_request_on_kept_alive_connection_has_its_own_deadline(server: tuple[int, App]) -> None:
    port, app = server
    s = connect(port)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
    for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa":
        try:
            s.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        time.sleep(0.1)
    assert b"408" in read_all(s)
    assert len(app.seen) == 1


def test_stalled_body_is_closed_and_the_app_sees_a_timed_out_disconnect(server: tuple[int, App]) -> None:
    port, app = server
    s = connect(port)
    s.sendall(b"PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
    # Progress every 0.5 s keeps it open past the 1 s idle limit ...
    for _ in range(4):
        time.sleep(0.5)
        s.sendall(b"x" * 10)
    # ... then nothing.
    read_all(s)
    deadline = time.monotonic() + 5
    while not app.seen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.seen == [{"disconnect": True, "timed_out": True, "received": 140}]


def test_a_client_that_hangs_up_mid_body_is_not_marked_timed_out(server: tuple[int, App]) -> None:
    port, app = server
    s = connect(port)
    s.sendall(b"PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
    time.sleep(0.2)
    s.close()
    deadline = time.monotonic() + 5
    while not app.seen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.seen and app.seen[0]["disconnect"] and not app.seen[0]["timed_out"]


def test_connections_beyond_the_bound_close_the_longest_idle(server: tuple[int, App]) -> None:
    port, _ = server
    held = [connect(port) for _ in range(3)]
    for s in held:
        s.sendall(b"G")  # each waits for the rest of its headers
        time.sleep(0.05)
    newest = connect(port)
    newest.settimeout(2)
    held[0].settimeout(2)
    assert read_all(held[0]) == b""  # the oldest was closed to make room
    newest.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert newest.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_the_serve_listener_has_the_api_listeners_deadlines() -> None:
    """Both listeners are built by one function: a slow client is no cheaper on Serve's listener."""
    import ssl
    from types import SimpleNamespace

    from raywarden.config import ClusterConfig, Listen
    from raywarden.gateway.deadlines import ReadDeadlines
    from raywarden.gateway.protocols import read_limits
    from raywarden.gateway.serve.server import server_for

    config = ClusterConfig(serve_listen=Listen(host="127.0.0.1", port=8000), gateway_header_timeout_seconds=7)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)

    class Listener:  # what server_for reads of the Serve listener's app
        s = SimpleNamespace(audit=None)
        engine = None

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            return None

    served = server_for(Listener(), config, tls)  # type: ignore[arg-type]
    protocol: Any = served.config.http
    assert issubclass(protocol, ReadDeadlines) and protocol.limits == read_limits(config)
    assert protocol.limits.header_seconds == 7 and served.config.ssl is tls
    assert protocol.refusals.listener == "serve"  # its protocol's refusals are audited as the Serve listener's

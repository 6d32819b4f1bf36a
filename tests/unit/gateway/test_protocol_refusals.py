"""What the gateway's HTTP protocol refuses before the app sees a request (gateway/heads.py): a head over the
bound (431 from httptools; h11 holds a head that has not ended to the same bound and answers 400), and what
either parser rejects (400). Each gets a decision record and an outcome record, like any refusal, and a head
within the bound followed by a large body is not mistaken for one. A real uvicorn server on loopback with the
gateway's protocol class, the offline gateway's real audit log, and a small ASGI app behind."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from raywarden.gateway.deadlines import ReadLimits
from raywarden.gateway.heads import ProtocolRefusals
from raywarden.gateway.protocols import http_protocol
from tests.unit.gateway.conftest import Gateway

pytestmark = pytest.mark.unit

HEAD_BYTES = 8 * 1024
LIMITS = ReadLimits(header_seconds=30.0, body_idle_seconds=30.0, max_connections=16, head_bytes=HEAD_BYTES)


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = str(size).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(params=["httptools", "h11"])
def served(request: pytest.FixtureRequest, gateway: Gateway) -> Iterator[tuple[str, int, Gateway]]:
    refusals = ProtocolRefusals(gateway.app.audit, lambda: gateway.app.engine)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        http=http_protocol(request.param, LIMITS, refusals),
        h11_max_incomplete_event_size=HEAD_BYTES,
        lifespan="off",
        log_level="error",
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(srv.serve(sockets=[sock])), daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.01)
    yield request.param, sock.getsockname()[1], gateway
    srv.should_exit = True
    thread.join(10)


def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            s.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            while not _whole(answer) and (chunk := s.recv(65536)):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
    return int(status_line.split(" ")[1]), headers, body


def _whole(answer: bytes) -> bool:
    """The answer's head and its Content-Length of body are in (the connection may stay open)."""
    head, found, body = answer.partition(b"\r\n\r\n")
    lengths = [line.split(b":", 1)[1] for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
    return bool(found) and bool(lengths) and len(body) >= int(lengths[0])


def test_a_head_over_the_bound_is_refused_and_audited(served: tuple[str, int, Gateway]) -> None:
    parser, port, gateway = served
    unterminated = b"GET /api/version HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (HEAD_BYTES * 4)
    status, headers, body = exchange(port, unterminated)
    expected = 431 if parser == "httptools" else 400  # h11 names no cause for what it refuses
    assert status == expected, body
    assert json.loads(body)["request_id"] == headers["x-request-id"]
    decision = gateway.audited(headers["x-request-id"], "deny", expected)
    assert decision["refused_by"] == "http_protocol" and decision["principal"] is None
    if parser == "httptools":
        assert decision["method"] == "GET" and decision["path"] == "/api/version", decision
        assert f"over {HEAD_BYTES} bytes" in decision["reason"]


@pytest.mark.parametrize(
    "first",
    [b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"],
    ids=["no-body", "with-body"],
)
def test_a_head_over_the_bound_after_a_request_in_the_same_read_is_refused(
    served: tuple[str, int, Gateway], first: bytes
) -> None:
    """The next head begins where the parser alone knows (the end of the first request), so its bytes are
    counted by what the parser hands uvicorn. h11 bounds only heads that have not ended (module docstring)."""
    parser, port, gateway = served
    if parser == "h11":
        pytest.skip("h11 takes a whole head that arrives in one read, up to the size of a read")
    huge = b"GET /b HTTP/1.1\r\nHost: x\r\n" + b"X-Big: %s\r\n" % (b"a" * 1000) * (HEAD_BYTES // 500) + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(first + huge)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1 ") == 2, answer
    refusal = answer[answer.index(b"HTTP/1.1 ", 1) :]
    assert refusal.startswith(b"HTTP/1.1 431 "), refusal
    request_id = next(line for line in refusal.split(b"\r\n") if line.startswith(b"x-request-id: "))[14:]
    decision = gateway.audited(request_id.decode(), "deny", 431)
    assert f"over {HEAD_BYTES} bytes" in decision["reason"] and decision["path"] == "/b", decision


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET\x01 / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
    ids=["header-line", "request-line", "length-and-chunked"],
)
def test_what_the_parser_rejects_is_audited(served: tuple[str, int, Gateway], request_bytes: bytes) -> None:
    parser, port, gateway = served
    if parser == "h11" and b"Transfer-Encoding" in request_bytes:
        pytest.skip("h11 reads such a body as chunked (RFC 9112 lets a server do so); httptools refuses it")
    status, headers, body = exchange(port, request_bytes)
    assert status == 400, body
    decision = gateway.audited(headers["x-request-id"], "deny", 400)
    assert decision["reason"].startswith("HTTP parser: "), decision


def test_a_head_within_the_bound_takes_a_larger_body(served: tuple[str, int, Gateway]) -> None:
    _, port, gateway = served
    body = b"b" * (HEAD_BYTES * 8)
    head = b"POST /x HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * (HEAD_BYTES - 200) + b"\r\n"
    request = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    status, _, answer = exchange(port, request)
    assert (status, answer) == (200, str(len(body)).encode())
    assert not [r for r in gateway.records() if r.get("refused_by")]


def test_a_refusal_that_cannot_be_recorded_is_answered_503(served: tuple[str, int, Gateway]) -> None:
    _, port, gateway = served
    audit: Any = gateway.app.audit
    audit.fail("disk full")  # as when another worker's write failed: every worker refuses
    status, _, body = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    assert status == 503 and b"audit log unavailable" in body, body

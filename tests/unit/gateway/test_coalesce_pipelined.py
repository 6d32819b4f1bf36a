"""Pipelined requests through the one-record-per-answer wrapper (gateway/coalesce.py): several requests in one
TLS record are answered once each, in order."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from tests.unit.gateway.test_coalesce import port, tls_files  # noqa: F401  (fixtures)

pytestmark = pytest.mark.unit


def exchange(port: int, cafile: Path, request: bytes) -> bytes:  # noqa: F811
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(request)  # one write: one TLS record
            answer = b""
            try:
                while chunk := tls.recv(65536):
                    answer += chunk
            except (TimeoutError, ssl.SSLError, ConnectionError):
                pass
    return answer


def test_pipelined_requests_are_answered_once_each_in_order(port: int, tls_files: tuple[Path, Path]) -> None:  # noqa: F811
    one = b"GET /%d HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
    last = b"GET /stream HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
    answer = exchange(port, tls_files[0], b"".join(one % i for i in range(5)) + last)
    assert answer.count(b"HTTP/1.1 200 OK") == 6
    assert answer.count(b"helloworld") == 5 and answer.endswith(b"chunkchunkchunk")
    assert answer.index(b"chunkchunkchunk") > answer.rindex(b"helloworld")


def test_an_over_size_head_after_a_pipelined_request_is_refused_not_answered(
    port: int,  # noqa: F811
    tls_files: tuple[Path, Path],  # noqa: F811
) -> None:
    """The head bound (heads.py) holds for the second request of a read too: httptools' count restarts at the
    end of the first request, and the bytes of the second head already in that read must count."""
    good = b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
    huge = b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\nx-filler: " + b"a" * (70 * 1024) + b"\r\n\r\n"
    answer = exchange(port, tls_files[0], good + huge)
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert answer.count(b"helloworld") == 1, "a 70 KiB head was answered past the 64 KiB bound"
    refusal = answer.index(b"HTTP/1.1 4")  # 431 from heads.py, or 400 from h11's own bound
    assert refusal > answer.index(b"helloworld")

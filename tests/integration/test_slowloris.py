"""Replay of the slowloris finding against a running gateway: an anonymous peer that completed TLS (no client
certificate) trickles a request's headers one byte every 2 s. The gateway answers 408 and closes it once the
header deadline (gateway_header_timeout_seconds, 30 s by default) passes, and serves others meanwhile."""

from __future__ import annotations

import socket
import time

import pytest

from raywarden.config import ClusterConfig
from tests.support import Cluster, tls_context

pytestmark = pytest.mark.integration


def test_trickled_headers_get_408_and_the_connection_closes(cluster: Cluster) -> None:
    deadline_s = ClusterConfig().gateway_header_timeout_seconds
    host, port = cluster.url.removeprefix("https://").split(":")
    raw = socket.create_connection((host, int(port)), timeout=10)
    with tls_context(cluster).wrap_socket(raw, server_hostname=host) as conn:
        request = b"GET /api/version HTTP/1.1\r\nHost: " + host.encode() + b"\r\nX-Slow: " + b"a" * 200
        answer, sent = b"", 0
        give_up = time.monotonic() + deadline_s * 3
        conn.settimeout(2)
        while not answer and time.monotonic() < give_up:
            try:
                conn.sendall(request[sent : sent + 1])
                sent += 1
                answer = conn.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        rest = b""
        try:
            while chunk := conn.recv(65536):
                rest += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    assert (answer + rest).startswith(b"HTTP/1.1 408 "), answer + rest
    assert sent < len(request)  # cut off by the deadline, long before the headers could have ended
    with tls_context(cluster).wrap_socket(
        socket.create_connection((host, int(port)), timeout=10), server_hostname=host
    ) as ok:
        ok.sendall(b"GET /api/version HTTP/1.1\r\nHost: " + host.encode() + b"\r\nConnection: close\r\n\r\n")
        assert ok.recv(65536).startswith(b"HTTP/1.1 401 ")

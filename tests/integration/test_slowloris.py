"""Replay of the slowloris finding against a running gateway: an anonymous peer that completed TLS (no client
certificate) trickles a request's headers one byte every 2 s. The gateway answers 408 and closes it once the
header deadline (gateway_header_timeout_seconds, 30 s by default) passes, and serves others meanwhile. The
header deadline bounds time, not bytes: a head of megabytes gets 431 at once, and what the HTTP parser
rejects is audited like any refusal (gateway/heads.py)."""

from __future__ import annotations

import json
import socket
import ssl
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


def _exchange(cluster: Cluster, request: bytes) -> bytes:
    """Send ``request`` over TLS without a client certificate; what the gateway answered before closing."""
    host, port = cluster.url.removeprefix("https://").split(":")
    raw = socket.create_connection((host, int(port)), timeout=30)
    with tls_context(cluster).wrap_socket(raw, server_hostname=host) as conn:
        try:
            conn.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the end: the answer may still be readable
        answer = b""
        try:
            while chunk := conn.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError, ssl.SSLError):
            pass
    return answer


def test_a_head_of_megabytes_gets_431_and_is_audited(cluster: Cluster) -> None:
    # Unterminated, as in the finding: the gateway must answer without waiting for its end (or its deadline).
    answer = _exchange(cluster, b"GET /api/version HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (4 * 1024 * 1024))
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:300]
    request_id = json.loads(answer.partition(b"\r\n\r\n")[2])["request_id"]
    records = [r for r in cluster.audit_records() if r.get("request_id") == request_id]
    assert [(r["kind"], r["status"]) for r in records] == [("request", 431), ("outcome", 431)], records
    assert records[0]["decision"] == "deny" and records[0]["refused_by"] == "http_protocol"


def test_a_request_the_parser_rejects_is_audited(cluster: Cluster) -> None:
    answer = _exchange(cluster, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
    request_id = json.loads(answer.partition(b"\r\n\r\n")[2])["request_id"]
    records = [r for r in cluster.audit_records() if r.get("request_id") == request_id]
    assert [(r["kind"], r["status"]) for r in records] == [("request", 400), ("outcome", 400)], records

"""Certificates of a dropped access CA stop working everywhere, connections set up before included.

`raywarden ca rotate access --finish --force` drops the old access CA although certificates from it remain
("they stop working", docs/credentials.md). The TLS layer checks a client certificate's chain at a full
handshake only: a connection kept alive from before, or a TLS session resumed from a ticket issued before
(ticket keys belong to the context a worker started with, which the swap to the new CA does not replace), carries
the old certificate on. So the gateway checks on every request that the certificate's issuer is an access CA it
trusts now (gateway/access_trust.py), and audits the refusal. Its own cluster, because the rotation changes the CAs.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.support import Cluster, start_cluster, stop_cluster

pytestmark = pytest.mark.integration
CONNECTIONS = 6  # spread over the gateway's workers


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="rwt-cafinish-"))
    try:
        yield start_cluster(root, port=free_port())
    finally:
        stop_cluster(root)
        shutil.rmtree(root, ignore_errors=True)


def _get(conn: ssl.SSLSocket, path: str) -> int:
    """One request on a kept-alive connection; the answer's status (its body read to the end)."""
    host, port = conn.getpeername()[:2]
    conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, "the gateway closed the connection"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lengths = [line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    while len(rest) < int(lengths[0]):
        rest += conn.recv(65536)
    return int(head.split()[1])


def _keeping_alive(cluster: Cluster, kept: list[ssl.SSLSocket], *args: str) -> None:
    """Run `raywarden ARGS` while a request every moment keeps each connection from closing as idle."""
    command = subprocess.Popen(
        [sys.executable, "-m", "raywarden.cli.main", *args],
        env=cluster.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while command.poll() is None:
        for conn in kept:
            assert _get(conn, "/raywarden/v1/ca") == 200
        time.sleep(0.3)
    out, err = command.communicate()
    assert command.returncode == 0, out + err


def test_old_ca_certificates_stop_on_kept_alive_connections_and_resumed_sessions(own_cluster: Cluster) -> None:
    cluster = own_cluster
    host, port = cluster.url.removeprefix("https://").split(":")
    old_cert = cluster.issue("olga")  # from the access CA about to be dropped
    client = ssl.create_default_context(cafile=cluster.ca)
    client.load_cert_chain(*old_cert)
    kept: list[ssl.SSLSocket] = []
    try:
        _attack(cluster, client, host, port, kept)
    finally:
        for conn in kept:
            conn.close()


def _attack(cluster: Cluster, client: ssl.SSLContext, host: str, port: str, kept: list[ssl.SSLSocket]) -> None:
    for _ in range(CONNECTIONS):
        conn = client.wrap_socket(socket.create_connection((host, int(port)), timeout=30), server_hostname=host)
        kept.append(conn)
        assert _get(conn, "/raywarden/v1/whoami") == 200
    sessions = [conn.session for conn in kept]

    _keeping_alive(cluster, kept, "ca", "rotate", "access")
    _keeping_alive(cluster, kept, "ca", "rotate", "access", "--finish", "--force")

    after = [_get(conn, "/raywarden/v1/whoami") for conn in kept]

    # The client now trusts the old CA only and the gateway presents a new-CA certificate: a full handshake
    # fails on the client's side, so only a resumed session (no certificates exchanged) gets through.
    resumed = []
    for session in sessions:
        raw = socket.create_connection((host, int(port)), timeout=30)
        try:
            conn = client.wrap_socket(raw, server_hostname=host, session=session)
        except ssl.SSLError:
            raw.close()
            continue
        with conn:
            resumed.append(_get(conn, "/raywarden/v1/whoami"))
    assert (after, [s for s in resumed if s != 401]) == ([401] * CONNECTIONS, []), (
        f"old-CA certificate accepted: kept-alive connections answered {after}, resumed sessions {resumed}"
    )
    # Each refusal is audited with its reason (the worker's audit writer may lag its answer a little).
    deadline = time.monotonic() + 60
    while len(refused := _refused_for_issuer(cluster)) < CONNECTIONS + len(resumed) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(refused) == CONNECTIONS + len(resumed) and all(r["status"] == 401 for r in refused), refused[:2]


def _refused_for_issuer(cluster: Cluster) -> list[dict[str, Any]]:
    return [
        r
        for r in cluster.audit_records()
        if r.get("kind") == "request" and "not issued by an access CA trusted now" in str(r.get("reason"))
    ]

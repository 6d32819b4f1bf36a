"""A new gateway certificate while `raywarden up` runs the gateway as a supervisor and its workers: every worker
swaps it in by itself, new connections get it, an open connection keeps the one it started with, and the
supervisor and its workers never restart."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography import x509

from raywarden.cluster import runstate
from raywarden.gateway.runinfo import workers_file
from raywarden.pki.certs import load_cert, serial_hex
from tests.support import Cluster, run_cli, tls_context

pytestmark = pytest.mark.integration
MAX_FRESH = 400  # connections to wait for every worker's swap; the kernel hands them out among the workers


def _workers(cluster: Cluster) -> list[int]:
    return list(json.loads(workers_file(cluster.state).read_text())["workers"])


def _connect(cluster: Cluster) -> http.client.HTTPSConnection:
    url = urlsplit(cluster.url)
    conn = http.client.HTTPSConnection(
        url.hostname or "127.0.0.1", url.port, context=tls_context(cluster, cluster.admin_cert), timeout=60
    )
    conn.connect()
    return conn


def _get(conn: http.client.HTTPSConnection) -> tuple[int, str, int]:
    """Status, served certificate's serial and local port of one request on ``conn`` (kept open)."""
    conn.request("GET", "/api/version")
    resp = conn.getresponse()
    resp.read()
    sock = conn.sock
    if not isinstance(sock, socket.socket) or not hasattr(sock, "getpeercert"):
        raise TypeError("not a TLS connection")
    der = sock.getpeercert(binary_form=True)
    if der is None:
        raise TypeError("no server certificate")
    return resp.status, serial_hex(x509.load_der_x509_certificate(der)), sock.getsockname()[1]


def _fresh(cluster: Cluster) -> tuple[int, str]:
    conn = _connect(cluster)
    try:
        status, serial, _ = _get(conn)
    finally:
        conn.close()
    return status, serial


def _swaps(cluster: Cluster, serial: str) -> list[dict[str, Any]]:
    return [
        r
        for r in cluster.audit_records(settle_s=0.5)
        if r.get("kind") == "tls" and r.get("event") == "reload" and r.get("serial") == serial
    ]


def test_a_new_gateway_certificate_reaches_every_worker_without_a_restart(cluster: Cluster) -> None:
    run = runstate.read_run_state(cluster.state)
    assert run is not None
    workers = _workers(cluster)
    old = serial_hex(load_cert(cluster.state.gateway_cert))
    kept = _connect(cluster)
    status, served, port = _get(kept)
    assert (status, served) == (200, old)
    # The kept connection is used every second, as a busy client would (uvicorn closes one idle for 5 s).
    stop = threading.Event()
    kept_answers: list[tuple[int, str, int] | str] = []

    def keep_using() -> None:
        while not stop.wait(1.0):
            try:
                kept_answers.append(_get(kept))
            except (OSError, http.client.HTTPException) as exc:
                kept_answers.append(repr(exc))
                return

    user = threading.Thread(target=keep_using)
    user.start()
    try:
        rotated = run_cli(cluster, "cert", "rotate", "--gateway", "--json", check=True)
        new = json.loads(rotated.stdout)["serial"]
        assert new != old and serial_hex(load_cert(cluster.state.gateway_cert)) == new

        # Fresh connections until every worker has swapped (each looks at the files at most once a second).
        swapped: set[int] = set()
        seen: list[tuple[int, str]] = []
        with ThreadPoolExecutor(4) as pool:
            while len(seen) < MAX_FRESH and swapped != set(workers):
                seen += pool.map(lambda _: _fresh(cluster), range(8))
                swapped = {r["pid"] for r in _swaps(cluster, new)}
        assert swapped == set(workers), f"workers {workers}, swapped {swapped} after {len(seen)} connections"
        assert {s for s, _ in seen} == {200}
        # Once every worker has swapped, every new connection gets the new certificate.
        assert {_fresh(cluster)[1] for _ in range(16)} == {new}
        # And the kept connection goes on answering after every worker has swapped (twice more, a second apart).
        after_swap = len(kept_answers)
        deadline = time.monotonic() + 30
        while len(kept_answers) < after_swap + 2 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        user.join()
        kept.close()
    # The connection opened before kept its certificate and its socket, and went on working throughout.
    assert len(kept_answers) >= 3 and set(kept_answers) == {(200, old, port)}, kept_answers[-3:]

    records = cluster.audit_records()
    swaps = _swaps(cluster, new)
    assert sorted(r["pid"] for r in swaps) == sorted(workers), "one swap per worker"
    assert all(r["accepted"] is True and r["old_serial"] == old for r in swaps)
    issued = [r for r in records if r.get("event") == "gateway.cert.renew" and r.get("serial") == new]
    assert len(issued) == 1 and issued[0]["actor"].startswith("local:")
    # Nothing restarted: the same supervisor, the same workers.
    after = runstate.read_run_state(cluster.state)
    assert after is not None and after.gateway_pid == run.gateway_pid
    assert _workers(cluster) == workers
    assert not [r for r in records if r.get("event") == "worker_exit" and r.get("pid") in workers]

"""The gateway's certificate, renewed and swapped in place: real TLS over loopback sockets, real certificates
from the cluster's access CA, the context exactly as the gateway builds it (gateway/tls.py), a plain
asyncio server in place of uvicorn (the swap happens in OpenSSL's ClientHello callback, below either)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from raywarden.cluster import pkilock
from raywarden.cluster.certlife import Lifetime
from raywarden.cluster.setup import init_state, issue_gateway_certificate
from raywarden.config import ClusterConfig, Listen
from raywarden.files import write_private, write_public
from raywarden.gateway import renewal, tls
from raywarden.pki.ca_keys import CertificateAuthority
from raywarden.pki.certs import load_cert, serial_hex
from raywarden.pki.keys import generate_private_key, private_key_pem
from raywarden.pki.spiffe import SpiffeId
from raywarden.state import StateDir

pytestmark = pytest.mark.unit
TD = "tls.test"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StateDir:
    monkeypatch.setenv("RAYWARDEN_HOME", str(tmp_path / "home"))
    target = StateDir(tmp_path / "state")
    config = ClusterConfig(
        trust_domain=TD, listen=Listen(host="127.0.0.1", port=18443), gateway_cert_ttl=dt.timedelta(minutes=2)
    )
    init_state(target, config, admin_name="admin", profile_name="tls")
    return target


@dataclass
class Server:
    port: int
    reloads: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


@pytest.fixture
def server(state: StateDir) -> Iterator[Server]:
    """An echo server on the gateway's context, on its own event loop thread."""
    found = Server(0)
    ctx = tls.server_context(state, on_refused=found.refused.append, on_reload=found.reloads.append)
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
        except ConnectionError:
            pass  # a client that closed without TLS close_notify
        writer.close()

    async def main() -> asyncio.Server:
        srv = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=ctx)
        found.port = srv.sockets[0].getsockname()[1]
        ready.set()
        return srv

    def run() -> None:
        asyncio.set_event_loop(loop)
        srv = loop.run_until_complete(main())
        loop.run_forever()
        srv.close()
        loop.run_until_complete(srv.wait_closed())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield found
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def connect(state: StateDir, port: int) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(state.access_ca_cert))
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1")


def served_serial(conn: ssl.SSLSocket) -> str:
    der = conn.getpeercert(binary_form=True)
    assert der is not None
    return serial_hex(x509.load_der_x509_certificate(der))


def echo(conn: ssl.SSLSocket, text: str) -> str:
    conn.sendall(text.encode() + b"\n")
    return conn.recv(100).decode().strip()


def make_due(state: StateDir) -> x509.Certificate:
    """Replace the gateway certificate by one already past 2/3 of its life (signed by the access CA's key,
    as an older renewal would have made it): notBefore 10 minutes ago, notAfter in 2 minutes."""
    ca_cert = load_cert(state.access_ca_cert)
    ca_key: Any = serialization.load_pem_private_key(state.access_ca_key.read_bytes(), password=None)
    current = load_cert(state.gateway_cert)
    key = generate_private_key()
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(current.subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=10))
        .not_valid_after(now + dt.timedelta(minutes=2))
    )
    for ext in current.extensions:
        if not isinstance(ext.value, x509.AuthorityKeyIdentifier):
            builder = builder.add_extension(ext.value, ext.critical)
    cert = builder.sign(ca_key, hashes.SHA256())
    with pkilock.holding(state.renewal_lock):
        write_private(state.gateway_key, private_key_pem(key))
        write_public(state.gateway_cert, cert.public_bytes(serialization.Encoding.PEM))
    assert Lifetime.of(cert).due()
    return cert


def access_ca(state: StateDir) -> CertificateAuthority:
    return CertificateAuthority.load("access", TD, state.access_ca_cert, state.access_ca_key)


def serial_now(state: StateDir, port: int) -> str:
    with connect(state, port) as conn:
        return served_serial(conn)


def wait_for_swap(state: StateDir, port: int, old: str) -> ssl.SSLSocket:
    """New connections until one is served the new certificate (the context looks at most once a second)."""
    for _ in range(40):
        conn = connect(state, port)
        if served_serial(conn) != old:
            return conn
        conn.close()
        threading.Event().wait(0.1)
    raise AssertionError("the renewed certificate was never served")


def test_a_renewed_certificate_reaches_new_connections_and_open_ones_keep_theirs(
    state: StateDir, server: Server
) -> None:
    kept = connect(state, server.port)
    old = served_serial(kept)
    assert echo(kept, "before") == "before"

    new_cert = issue_gateway_certificate(state, state.load_config(), access_ca(state))
    fresh = wait_for_swap(state, server.port, old)

    assert served_serial(fresh) == serial_hex(new_cert)
    assert echo(fresh, "new") == "new"
    # The connection opened before the swap still works, on the certificate it was set up with.
    assert echo(kept, "after") == "after" and served_serial(kept) == old
    assert server.reloads[-1]["accepted"] is True
    assert server.reloads[-1]["old_serial"] == old and server.reloads[-1]["serial"] == serial_hex(new_cert)
    kept.close()
    fresh.close()


def test_a_key_that_does_not_match_is_refused_and_the_old_certificate_stays(state: StateDir, server: Server) -> None:
    old = serial_now(state, server.port)
    # A certificate written without its key (what a half-finished copy by hand leaves behind).
    issue_gateway_certificate(state, state.load_config(), access_ca(state))
    write_private(state.gateway_key, private_key_pem(generate_private_key()))
    for _ in range(15):
        with connect(state, server.port) as conn:
            assert served_serial(conn) == old and echo(conn, "x") == "x"
        threading.Event().wait(0.1)
    refusals = [r for r in server.reloads if r["accepted"] is False]
    assert len(refusals) == 1 and "serial" in refusals[0]
    # Repaired: the next look swaps.
    new_cert = issue_gateway_certificate(state, state.load_config(), access_ca(state))
    with wait_for_swap(state, server.port, old) as conn:
        assert served_serial(conn) == serial_hex(new_cert)


def test_a_certificate_from_a_foreign_ca_is_never_served(state: StateDir, server: Server) -> None:
    old = serial_now(state, server.port)
    foreign = CertificateAuthority.create("access", TD, years=1)
    key = generate_private_key()
    cert = foreign.issue(key.public_key(), SpiffeId(TD, "gateway"), lifetime=dt.timedelta(hours=1), server=True)
    with pkilock.holding(state.renewal_lock):
        write_private(state.gateway_key, private_key_pem(key))
        write_public(state.gateway_cert, cert.public_bytes(serialization.Encoding.PEM))
    threading.Event().wait(1.2)
    assert serial_now(state, server.port) == old
    assert any("not issued by a trusted access CA" in r.get("reason", "") for r in server.reloads)


def test_a_broken_certificate_at_start_is_fatal(state: StateDir) -> None:
    state.gateway_cert.write_text("not a certificate")
    with pytest.raises(Exception, match="not a PEM certificate"):
        tls.server_context(state)


def test_renewal_happens_once_whatever_the_number_of_gateway_processes(state: StateDir) -> None:
    due = make_due(state)
    # Several renewers (one per gateway worker process) looking at the same moment: one issues.
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: renewal.renew_if_due(state), range(6)))
    done = [r for r in results if r is not None]
    assert len(done) == 1 and done[0].old_serial == serial_hex(due)
    now_serving = load_cert(state.gateway_cert)
    assert serial_hex(now_serving) == done[0].serial
    assert not Lifetime.of(now_serving).due()
    assert Lifetime.of(now_serving).total == dt.timedelta(minutes=2)


def test_the_renewer_records_and_audits_each_attempt(state: StateDir) -> None:
    from raywarden.audit.cluster import open_cluster_audit

    audit = open_cluster_audit(state)
    try:
        renewer = renewal.GatewayRenewer(state, audit)
        assert renewer.attempt() is None  # fresh from init: not due
        due = make_due(state)
        renewed = renewer.attempt()
        assert renewed is not None and renewed.old_serial == serial_hex(due)
        status = renewal.renewal_status(state)
        assert status is not None and status["accepted"] is True and status["serial"] == renewed.serial
        # The access CA's key unreadable: the attempt fails, is counted, recorded and audited; nothing changes.
        make_due(state)
        state.access_ca_key.chmod(0o644)
        assert renewer.attempt() is None and renewer.attempt() is None
        status = renewal.renewal_status(state)
        assert status is not None and status["accepted"] is False and status["failures"] == 2
        assert "accessible by other users" in status["reason"]
    finally:
        audit.close()
    lines = [x for p in sorted(state.audit_dir.glob("audit-*.jsonl")) for x in p.read_text().splitlines() if x]
    records = [json.loads(x) for x in lines]
    events = [r for r in records if r.get("event") == "gateway.cert.renew"]
    assert [e["accepted"] for e in events] == [True, False, False]
    assert events[0]["old_serial"] == serial_hex(due)


def test_the_renewer_looks_again_by_the_renewal_point(state: StateDir) -> None:
    cert = load_cert(state.gateway_cert)
    # A fresh 2-minute certificate is due 80 s after issuance; the renewer looks no later than 30 s from now.
    assert renewal.next_look(state) == renewal.MAX_WAIT_S
    at_due = Lifetime.of(cert).renew_at() - dt.timedelta(seconds=5)
    assert renewal.next_look(state, now=at_due) == pytest.approx(5, abs=0.01)
    assert renewal.next_look(state, now=at_due + dt.timedelta(minutes=1)) == renewal.MIN_WAIT_S

"""A client certificate that expires after the TLS handshake, replayed as the attack on it went: requests on the
kept-alive connection, on a TLS session resumed from a ticket, and a renewal through that resumed session. The
gateway checks the validity window on every request (TLS checks it only at a full handshake). Real TLS against
the real gateway, in TLS 1.3 and 1.2, and on every worker process that holds such a connection.

What this shows about the server: it issues session tickets, and a session resumed after the certificate expired
is accepted by the TLS layer with that certificate (no verification on resumption), so only the gateway's own
check per request keeps the expired certificate out.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import secrets
import socket
import ssl
import time
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from raywarden.identity.store import IdentityStore
from raywarden.pki.certs import serial_hex
from raywarden.pki.keys import generate_private_key
from tests.support import Cluster, tls_context

pytestmark = pytest.mark.integration

# Long enough for the first requests on a busy machine, short enough to wait for.
LIFETIME = dt.timedelta(seconds=20)
# uvicorn closes a connection idle for 5 s: the attacker's script kept it busy, and so does this test.
KEEPALIVE_EVERY_S = 2.0
CONNECTIONS = 4
RESUME_ATTEMPTS = 48  # each worker resumes only its own sessions (TLS 1.2): plenty, even under load


def _host_port(cluster: Cluster) -> tuple[str, int]:
    host, port = cluster.url.removeprefix("https://").split(":")
    return host, int(port)


def _connect(cluster: Cluster, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
    raw = socket.create_connection(_host_port(cluster), timeout=30)
    try:
        return ctx.wrap_socket(raw, server_hostname=_host_port(cluster)[0], session=session)
    except BaseException:
        raw.close()
        raise


def _call(
    cluster: Cluster, tls: ssl.SSLSocket, method: str = "GET", path: str = "/raywarden/v1/whoami", body: Any = None
) -> tuple[int, dict[str, Any]]:
    """One request on an existing TLS connection, which stays open for the next; the answer's JSON body, with
    the gateway's request id in it. The default asks the gateway itself (whoami), not Ray behind it."""
    conn = http.client.HTTPConnection(*_host_port(cluster), timeout=30)
    conn.sock = tls  # http.client uses a connected socket as it is
    data = None if body is None else json.dumps(body).encode()
    headers = {} if data is None else {"content-type": "application/json"}
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    answer: dict[str, Any] = json.loads(resp.read())
    answer.setdefault("request_id", resp.getheader("x-request-id"))
    return resp.status, answer


def _csr(spiffe_id: str) -> str:
    key = generate_private_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spiffe_id.rsplit("/", 1)[-1])]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _decisions(cluster: Cluster, request_ids: set[str]) -> list[dict[str, Any]]:
    """The decision records of these requests, once all are written."""
    deadline = time.monotonic() + 15
    while True:
        found = [r for r in cluster.audit_records() if r.get("request_id") in request_ids and r["kind"] == "request"]
        if len(found) == len(request_ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _resumed(cluster: Cluster, ctx: ssl.SSLContext, sessions: list[ssl.SSLSession]) -> ssl.SSLSocket:
    """A connection that resumed one of ``sessions``. Each worker process keeps its own session keys, so a
    resumption succeeds only on the worker that issued the session; on another the client falls back to a full
    handshake with the expired certificate, which TLS refuses (in TLS 1.3 at the first read, so such a connection
    is closed here before any request)."""
    for attempt in range(RESUME_ATTEMPTS):
        try:
            tls = _connect(cluster, ctx, session=sessions[attempt % len(sessions)])
        except (ssl.SSLError, ConnectionError):
            continue  # TLS 1.2: that full handshake itself failed
        if tls.session_reused:
            return tls
        tls.close()
    raise AssertionError(f"no TLS session resumed in {RESUME_ATTEMPTS} attempts")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["tls1.3", "tls1.2"])
def test_an_expired_certificate_is_refused_on_kept_connections_and_resumed_sessions(
    cluster: Cluster, version: ssl.TLSVersion
) -> None:
    name = f"short-{version.name[-3:].replace('_', '')}-{secrets.token_hex(3)}"
    cert_path, key_path = cluster.issue(name, groups=("developers",), lifetime=LIFETIME)
    with open(cert_path, "rb") as handle:
        cert = x509.load_pem_x509_certificate(handle.read())
    serial, spiffe_id = serial_hex(cert), f"spiffe://{cluster.state.load_config().trust_domain}/user/{name}"
    ctx = tls_context(cluster, (cert_path, key_path))
    ctx.maximum_version = version
    kept: list[ssl.SSLSocket] = []
    try:
        served: set[str] = set()
        for _ in range(CONNECTIONS):
            tls = _connect(cluster, ctx)
            kept.append(tls)
            status, body = _call(cluster, tls)
            assert status == 200 and tls.version() == version.name.replace("v1_", "v1.")
            served.add(body["request_id"])
        sessions = [tls.session for tls in kept if tls.session is not None]
        assert sessions  # the server issues sessions to resume (tickets, or ids on 1.2)

        # Kept busy until past notAfter, as the attacker kept theirs: no new handshake on any of them.
        expiry = cert.not_valid_after_utc.timestamp()
        while time.time() < expiry + 1:
            time.sleep(KEEPALIVE_EVERY_S)
            for tls in kept:
                assert _call(cluster, tls)[0] in (200, 401)

        refused: set[str] = set()
        for tls in kept:
            status, body = _call(cluster, tls, "GET", "/api/jobs/")
            assert status == 401 and "expired" in body["reason"] and "raywarden login" in body["reason"], body
            refused.add(body["request_id"])
        status, body = _call(cluster, kept[0], "POST", "/raywarden/v1/renew", {"csr": _csr(spiffe_id)})
        assert status == 401 and "expired" in body["reason"]
        refused.add(body["request_id"])
    finally:
        for tls in kept:
            tls.close()

    # Each refusal was decided by the worker that holds that connection: every worker that served one checked.
    allowed_by = {r.get("gateway_pid") for r in _decisions(cluster, served)}
    denied = _decisions(cluster, refused)
    assert len(denied) == len(refused)
    assert all(r["decision"] == "deny" and f"certificate {serial} expired" in r["reason"] for r in denied)
    assert {r.get("gateway_pid") for r in denied} == allowed_by

    resumed = _resumed(cluster, ctx, sessions)
    try:
        status, body = _call(cluster, resumed, "GET", "/api/jobs/")
        assert status == 401 and "expired" in body["reason"]
        status, renewal = _call(cluster, resumed, "POST", "/raywarden/v1/renew", {"csr": _csr(spiffe_id)})
        assert status == 401 and "expired" in renewal["reason"] and "certificate" not in renewal
    finally:
        resumed.close()
    for request_id in (body["request_id"], renewal["request_id"]):
        records = [r for r in cluster.audit_records() if r.get("request_id") == request_id]
        assert [r["kind"] for r in records][:1] == ["request"] and records[0]["decision"] == "deny"
    # The renewal through the resumed session issued nothing.
    issued = IdentityStore.open(cluster.state.identity_db).certificates_of(spiffe_id)
    assert [c["serial"] for c in issued] == [serial]

    # A full handshake with the expired certificate fails at TLS, and that is audited too.
    before = len(cluster.audit_records())
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        fresh = _connect(cluster, ctx)  # no session given: a full handshake
        try:
            _call(cluster, fresh)  # TLS 1.3: the server's verdict on the client certificate comes with the first read
        finally:
            fresh.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        tls_refusals = [r for r in cluster.audit_records()[before:] if r.get("event") == "handshake_refused"]
        if tls_refusals:
            break
        time.sleep(0.2)
    assert tls_refusals and "expired" in tls_refusals[-1]["reason"]


def test_a_certificate_revoked_mid_connection_is_refused_on_it(cluster: Cluster) -> None:
    cert_path, key_path = cluster.issue("revoked-midway", groups=("developers",))
    with open(cert_path, "rb") as handle:
        serial = serial_hex(x509.load_pem_x509_certificate(handle.read()))
    tls = _connect(cluster, tls_context(cluster, (cert_path, key_path)))
    try:
        assert _call(cluster, tls)[0] == 200
        IdentityStore.open(cluster.state.identity_db).revoke_certificate(serial, "test")
        status, body = _call(cluster, tls, "GET", "/raywarden/v1/whoami")
    finally:
        tls.close()
    assert status == 401 and body["reason"] == f"your client certificate {serial} is revoked"

"""Every kind of bad credential gets a clear refusal at the gateway, and the refusal is audited."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import time
from pathlib import Path

import pytest
import requests

from raywarden.identity.store import IdentityStore
from raywarden.pki.ca_keys import CertificateAuthority
from raywarden.pki.certs import cert_pem
from raywarden.pki.keys import generate_private_key, private_key_pem
from raywarden.pki.spiffe import SpiffeId
from tests.support import TD, Cluster, refusal_status, tls_context

pytestmark = pytest.mark.integration


def _get(cluster: Cluster, cert: tuple[str, str] | None, path: str = "/api/version") -> requests.Response:
    return requests.get(cluster.url + path, cert=cert, verify=cluster.ca, timeout=30)


def _handshake_refused(cluster: Cluster, cert: tuple[str, str]) -> None:
    """The TLS layer refuses the certificate: not one byte of HTTP comes back, and the refusal is audited.

    (With TLS 1.3 the client finishes its side of the handshake before the server checks the client
    certificate, so the refusal shows as a closed connection rather than an alert on the client.)"""
    before = len(cluster.audit_records())
    host, port = cluster.url.removeprefix("https://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        try:
            with tls_context(cluster, cert).wrap_socket(raw, server_hostname=host) as conn:
                conn.sendall(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n")
                assert conn.recv(1024) == b""
        except (ssl.SSLError, ConnectionResetError):
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if any(r.get("kind") == "tls" and r.get("decision") == "deny" for r in cluster.audit_records()[before:]):
            return
        time.sleep(0.05)
    raise AssertionError("the refused handshake was not audited")


def _denial(cluster: Cluster, resp: requests.Response) -> dict[str, object]:
    rid = resp.json()["request_id"]
    return next(r for r in cluster.audit_records() if r.get("request_id") == rid)


def test_no_credential_gives_401_with_hint(cluster: Cluster) -> None:
    resp = _get(cluster, None)
    assert resp.status_code == 401
    body = resp.json()
    assert body["error"] == "authentication required" and "client certificate" in body["hint"]
    assert resp.headers["x-raywarden-gateway"] == "1"
    assert _denial(cluster, resp)["reason"] == "no client certificate"


def test_foreign_ca_fails_the_handshake(cluster: Cluster, tmp_path: Path) -> None:
    foreign = CertificateAuthority.create("access", TD, years=1)  # same trust domain, other key
    key = generate_private_key()
    cert = foreign.issue(key.public_key(), SpiffeId(TD, "user", "admin"), lifetime=dt.timedelta(hours=1))
    (tmp_path / "c.crt").write_bytes(cert_pem(cert))
    (tmp_path / "c.key").write_bytes(private_key_pem(key))
    _handshake_refused(cluster, (str(tmp_path / "c.crt"), str(tmp_path / "c.key")))


def test_node_certificate_does_not_authenticate_a_person(cluster: Cluster) -> None:
    _handshake_refused(cluster, (str(cluster.state.node_cert), str(cluster.state.node_key)))


def test_gateway_certificate_is_not_a_client_certificate(cluster: Cluster) -> None:
    _handshake_refused(cluster, (str(cluster.state.gateway_cert), str(cluster.state.gateway_key)))


def test_expired_certificate_fails_the_handshake(cluster: Cluster) -> None:
    cert = cluster.issue("expired-user", groups=("admins",), lifetime=dt.timedelta(minutes=-1))
    _handshake_refused(cluster, cert)


def test_revoked_certificate_is_refused_at_once(cluster: Cluster) -> None:
    cert = cluster.issue("revokee", groups=("admins",))
    assert _get(cluster, cert).status_code == 200
    from cryptography import x509

    serial = format(x509.load_pem_x509_certificate(Path(cert[0]).read_bytes()).serial_number, "x")
    IdentityStore.open(cluster.state.identity_db).revoke_certificate(serial, "test")
    resp = _get(cluster, cert)
    assert resp.status_code == 401 and resp.json()["error"] == "authentication failed"
    assert "revoked" in str(_denial(cluster, resp)["reason"])


def test_certificate_never_recorded_is_refused(cluster: Cluster) -> None:
    cert = cluster.issue("ghost", groups=("admins",), register=False)
    resp = _get(cluster, cert)
    assert resp.status_code == 401


def test_disabled_user_is_refused(cluster: Cluster) -> None:
    cert = cluster.issue("leaver", groups=("admins",))
    assert _get(cluster, cert).status_code == 200
    IdentityStore.open(cluster.state.identity_db).set_disabled(f"spiffe://{TD}/user/leaver", True)
    resp = _get(cluster, cert)
    assert resp.status_code == 401 and "disabled" in str(_denial(cluster, resp)["reason"])


def test_user_no_policy_covers_is_forbidden(cluster: Cluster) -> None:
    jobs_before = len(cluster.ray_jobs())
    cert = cluster.issue("dev", groups=("contractors",))
    resp = requests.post(
        cluster.url + "/api/jobs/", json={"entrypoint": "echo hi"}, cert=cert, verify=cluster.ca, timeout=30
    )
    assert refusal_status(resp) == 403 and resp.json()["error"] == "forbidden"
    record = _denial(cluster, resp)
    assert record["action"] == "jobs.submit" and record["principal"] == f"spiffe://{TD}/user/dev"
    assert len(cluster.ray_jobs()) == jobs_before

"""The caller's own account (``GET /raywarden/v1/whoami``, ``POST /raywarden/v1/logout``) and a client
certificate's validity checked on every request: the TLS layer checks it only at a full handshake, so requests
on a kept-alive connection or a resumed TLS session carry a certificate nobody looked at again. Here the
connection's verified certificate is put in the request scope as uvicorn's protocol puts it
(tests/unit/gateway/conftest.py); tests/integration/test_cert_expiry.py replays the same over real TLS."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from raywarden.errors import AuthenticationError
from raywarden.gateway.authn import Authenticator
from raywarden.gateway.handlers import websocket
from raywarden.pki import ca_keys
from raywarden.pki.certs import serial_hex
from raywarden.pki.keys import generate_private_key
from tests.unit.gateway.conftest import TD, WS_URL, Gateway, spiffe

pytestmark = pytest.mark.unit

WHOAMI = "/raywarden/v1/whoami"
LOGOUT = "/raywarden/v1/logout"
RENEW = "/raywarden/v1/renew"


@contextmanager
def _clock_at(monkeypatch: pytest.MonkeyPatch, moment: dt.datetime) -> Iterator[None]:
    """The access CA signs as if it were ``moment`` (its own clock; the gateway's stays the real one)."""
    with monkeypatch.context() as patched:
        patched.setattr(ca_keys, "_now", lambda: moment)
        yield


def _expired(gateway: Gateway, monkeypatch: pytest.MonkeyPatch, name: str) -> bytes:
    """A certificate that was valid for an hour, two hours ago (the connection was set up back then)."""
    with _clock_at(monkeypatch, dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)):
        return gateway.certificate(name, "developers")


def _csr(name: str) -> str:
    key = generate_private_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe(name))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _jti(headers: dict[str, str]) -> str:
    found: str = jwt.decode(headers["authorization"].split()[1], options={"verify_signature": False})["jti"]
    return found


def _serial(der: bytes) -> str:
    return serial_hex(x509.load_der_x509_certificate(der))


def test_whoami_with_a_certificate_says_identity_groups_and_expiry(gateway: Gateway) -> None:
    der = gateway.certificate("wanda", "developers", "viewers")
    with gateway.with_certificate(der):
        resp = gateway.client.get(WHOAMI)
    assert resp.status_code == 200, resp.text
    me = resp.json()
    cert = x509.load_der_x509_certificate(der)
    assert me["identity"] == spiffe("wanda") and me["kind"] == "user" and me["name"] == "wanda"
    assert me["groups"] == ["developers", "viewers"] and me["trust_domain"] == TD
    assert me["auth_method"] == "certificate" and me["credential_id"] == serial_hex(cert)
    assert dt.datetime.fromisoformat(me["credential_expires_at"]) == cert.not_valid_after_utc
    assert 3000 < me["credential_seconds_left"] <= 3600
    gateway.audited(resp.headers["x-request-id"], "allow", 200)


def test_whoami_with_a_bearer_token_and_without_any_credential(gateway: Gateway) -> None:
    resp = gateway.client.get(WHOAMI, headers=gateway.bearer("ci-bot", "developers", kind="sa"))
    assert resp.status_code == 200
    me = resp.json()
    assert me["identity"] == spiffe("ci-bot", "sa") and me["kind"] == "sa" and me["auth_method"] == "token"
    assert me["credential_seconds_left"] > 0
    anonymous = gateway.client.get(WHOAMI)
    assert anonymous.status_code == 401 and "identity" not in anonymous.json()
    gateway.audited(anonymous.json()["request_id"], "deny", 401)


def test_logout_revokes_the_certificate_and_the_named_token(gateway: Gateway) -> None:
    der = gateway.certificate("lou", "developers")
    token = gateway.bearer("lou")
    jti = _jti(token)
    with gateway.with_certificate(der):
        resp = gateway.client.post(LOGOUT, json={"jti": jti})
        assert resp.status_code == 200, resp.text
        done = resp.json()
        assert done["certificate_revoked"] and done["token_revoked"] and done["certificate_serial"] == _serial(der)
        # The very next request on the same connection is refused, and the holder is told why.
        again = gateway.client.get(WHOAMI)
    assert again.status_code == 401 and "revoked" in again.json()["reason"]
    assert gateway.client.get(WHOAMI, headers=token).status_code == 401
    assert gateway.store.certificate_owner(_serial(der)) == (spiffe("lou"), True)
    events = [r for r in gateway.records() if r.get("event") == "logout"]
    assert len(events) == 1 and events[0]["serial"] == _serial(der) and events[0]["jti"] == jti


def test_logout_needs_the_certificate_itself(gateway: Gateway) -> None:
    """A bearer token never revokes a certificate: an admin's neither (the permit asks for a certificate)."""
    der = gateway.certificate("tess", "developers")
    refused = gateway.client.post(LOGOUT, json={}, headers=gateway.bearer("tess"))
    assert refused.status_code == 403 and refused.json()["action"] == "identity.logout"  # Cedar's permit
    admin = gateway.client.post(LOGOUT, json={}, headers=gateway.bearer("admin"))  # admins pass Cedar: the handler
    assert admin.status_code == 403 and "present that certificate" in admin.json()["error"]
    # The handler's own refusal says what was refused, as the gateway's refusals do.
    assert admin.json()["action"] == "identity.logout" and admin.json()["resource"] == refused.json()["resource"]
    assert admin.json()["request_id"] == admin.headers["x-request-id"]
    assert gateway.store.certificate_owner(_serial(der)) == (spiffe("tess"), False)


def test_logout_never_touches_another_identitys_token(gateway: Gateway) -> None:
    other = gateway.bearer("otto", "developers")
    jti = _jti(other)
    der = gateway.certificate("mallory", "developers")
    with gateway.with_certificate(der):
        resp = gateway.client.post(LOGOUT, json={"jti": jti})
        assert resp.status_code == 403 and "nothing was revoked" in resp.json()["error"]
        for bad in ({"jti": 7}, {"jti": ""}, {"jti": "x" * 65}, {"jti": ["a"]}):
            refused = gateway.client.post(LOGOUT, json=bad)
            assert refused.status_code == 400, bad
        assert gateway.client.get(WHOAMI).status_code == 200  # still logged in: nothing was revoked
    assert gateway.client.get(WHOAMI, headers=other).status_code == 200
    assert gateway.store.certificate_owner(_serial(der)) == (spiffe("mallory"), False)


def test_logout_twice_is_refused_the_second_time(gateway: Gateway) -> None:
    der = gateway.certificate("twice", "developers")
    with gateway.with_certificate(der):
        assert gateway.client.post(LOGOUT, json={}).status_code == 200
        second = gateway.client.post(LOGOUT, json={})
    assert second.status_code == 401 and "revoked" in second.json()["reason"]
    assert len([r for r in gateway.records() if r.get("event") == "logout"]) == 1


def test_an_expired_certificate_is_refused_on_every_request(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection's certificate expired after its handshake: every route refuses it, the renewal too."""
    der = _expired(gateway, monkeypatch, "olga")
    serial = _serial(der)
    with gateway.with_certificate(der):
        for method, path, body in (
            ("GET", "/api/version", None),
            ("GET", "/api/jobs/", None),
            ("GET", WHOAMI, None),
            ("POST", RENEW, {"csr": _csr("olga")}),
            ("POST", "/raywarden/v1/token", {}),
            ("POST", LOGOUT, {}),
        ):
            resp = gateway.client.request(method, path, json=body)
            assert resp.status_code == 401, (path, resp.text)
            shown = resp.json()
            assert "expired" in shown["reason"] and "raywarden login" in shown["reason"]
            record = gateway.audited(shown["request_id"], "deny", 401)
            assert f"certificate {serial} expired" in record["reason"]
    # The renewal issued nothing: olga has her one expired certificate only.
    assert [c["serial"] for c in gateway.store.certificates_of(spiffe("olga"))] == [serial]
    assert gateway.ray.requests(path="/api/jobs/") == []


def test_a_certificate_not_yet_valid_is_refused_without_saying_why(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _clock_at(monkeypatch, dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)):
        der = gateway.certificate("early", "developers")
    with gateway.with_certificate(der):
        resp = gateway.client.get(WHOAMI)
    assert resp.status_code == 401 and "reason" not in resp.json()
    assert "not valid before" in gateway.audited(resp.json()["request_id"], "deny", 401)["reason"]


def test_validity_is_read_against_the_clock_of_each_request(gateway: Gateway) -> None:
    der = gateway.certificate("clocked", "developers")
    cert = x509.load_der_x509_certificate(der)
    auth: Authenticator = gateway.app.services.authenticator
    last = cert.not_valid_after_utc.timestamp()
    assert auth.from_certificate(der, now=last).spiffe_id == spiffe("clocked")
    with pytest.raises(AuthenticationError) as late:
        auth.from_certificate(der, now=last + 1)
    assert "expired" in late.value.reason and late.value.public and "expired" in late.value.public
    with pytest.raises(AuthenticationError) as early:
        auth.from_certificate(der, now=cert.not_valid_before_utc.timestamp() - 1)
    assert early.value.public is None
    assert auth.from_certificate(der, now=time.time()).expires_at == last


def test_a_revoked_certificate_on_a_kept_connection_is_told_it_is_revoked(gateway: Gateway) -> None:
    der = gateway.certificate("rev", "developers")
    with gateway.with_certificate(der):
        assert gateway.client.get(WHOAMI).status_code == 200
        gateway.store.revoke_certificate(_serial(der), "test")
        resp = gateway.client.get(WHOAMI)
    assert resp.status_code == 401 and resp.json()["reason"] == f"your client certificate {_serial(der)} is revoked"
    assert json.dumps(resp.json()).count("revoked") == 1


def _tail_until_closed(gateway: Gateway, job: str, headers: dict[str, str] | None = None) -> int:
    """Follow a job's log tail until the gateway closes it: the close code."""
    with gateway.client.websocket_connect(f"{WS_URL}/api/jobs/{job}/logs/tail", headers=headers or {}) as ws:
        assert ws.receive_text() == f"tail of {job}\n"
        while True:
            message = ws.receive()
            if message["type"] == "websocket.close":
                return int(message["code"])


def _tail_outcome(gateway: Gateway, job: str) -> dict[str, Any]:
    decision = [r for r in gateway.records() if r.get("path") == f"/api/jobs/{job}/logs/tail"][-1]
    assert decision["decision"] == "allow"
    deadline = time.monotonic() + 10  # the outcome record is written after the socket closed
    while time.monotonic() < deadline:
        records = gateway.records_of(decision["request_id"])
        if records[-1]["kind"] == "outcome":
            return records[-1]
        time.sleep(0.1)
    raise AssertionError(f"no outcome record for the tail of {job}")


def test_a_log_tail_ends_when_its_certificate_expires(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """`logs --follow` outlives the handshake too: the tail is closed (1008) when the certificate expires."""
    # Valid for one more second: issued an hour ago, for an hour.
    with _clock_at(monkeypatch, dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1, seconds=-1)):
        der = gateway.certificate("tailer", "developers")
    gateway.ray.add_job("endless-1", spiffe("tailer"))
    with gateway.with_certificate(der):
        assert _tail_until_closed(gateway, "endless-1") == 1008
    outcome = _tail_outcome(gateway, "endless-1")
    assert outcome["closed_by"] == "credential" and "expired" in outcome["reason"]


def test_a_log_tail_ends_when_its_token_is_revoked(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(websocket, "RECHECK_EVERY_S", 0.2)
    token = gateway.bearer("follower", "developers")
    gateway.ray.add_job("endless-2", spiffe("follower"))
    jti = _jti(token)
    with gateway.client.websocket_connect(f"{WS_URL}/api/jobs/endless-2/logs/tail", headers=token) as ws:
        assert ws.receive_text() == "tail of endless-2\n"
        assert ws.receive_text() == "more\n"  # still following
        gateway.store.revoke_token(jti, "test")
        code = None
        while code is None:
            message = ws.receive()
            code = message.get("code") if message["type"] == "websocket.close" else None
    assert code == 1008
    outcome = _tail_outcome(gateway, "endless-2")
    assert outcome["closed_by"] == "credential" and "revoked" in outcome["reason"]

"""Renewal at the gateway, offline: renewing with the current certificate, and a renewable service account's
expired certificate renewed by proof of possession, with reuse detection. Every refusal is audited."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from raywarden.identity.renewal import RenewalStore, RenewedCertificate
from raywarden.pki import ca_keys
from raywarden.pki.ca_keys import CertificateAuthority
from raywarden.pki.certs import cert_pem, fingerprint, serial_hex
from raywarden.pki.csr import build_csr
from raywarden.pki.keys import generate_private_key
from raywarden.pki.possession import possession_message, sign_possession
from raywarden.pki.rollout import rotate
from raywarden.pki.spiffe import SpiffeId
from tests.unit.gateway.conftest import TD, Gateway, spiffe

pytestmark = pytest.mark.unit

EXPIRED = "/raywarden/v1/renew/expired"


@dataclass
class Held:
    """A certificate and its key, as a CI runner keeps them."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> str:
        return cert_pem(self.cert).decode()

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


@contextmanager
def clock(moment: dt.datetime) -> Iterator[None]:
    """Issue certificates as if it were ``moment`` (the CA reads the time through this one function)."""
    original = ca_keys._now
    ca_keys._now = lambda: moment
    try:
        yield
    finally:
        ca_keys._now = original


def held(gw: Gateway, name: str, *, kind: str = "sa", ago: dt.timedelta = dt.timedelta(0), hours: float = 12) -> Held:
    """A certificate issued ``ago`` for ``hours``, recorded as the gateway records the ones it issues."""
    ident = gw.principal(name, "developers", kind=kind)
    access = CertificateAuthority.load("access", TD, gw.state.access_ca_cert, gw.state.access_ca_key)
    key = generate_private_key()
    with clock(dt.datetime.now(dt.timezone.utc) - ago):
        cert = access.issue(key.public_key(), SpiffeId.parse(ident), lifetime=dt.timedelta(hours=hours))
    gw.store.record_certificate(serial_hex(cert), ident, cert.not_valid_after_utc, issuer=access.fingerprint)
    return Held(cert, key)


def renewable(gw: Gateway, name: str, grace: dt.timedelta = dt.timedelta(days=7)) -> None:
    RenewalStore(gw.store).set_renew_grace(spiffe(name, "sa"), grace)


def post(gw: Gateway, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    resp = gw.client.post(EXPIRED, json=body)
    return resp.status_code, resp.json()


def renew_expired(
    gw: Gateway, old: Held, *, new_key: Any = None, identity: str | None = None
) -> tuple[int, dict[str, Any]]:
    """The client's two calls: the challenge, then the proof."""
    status, answer = post(gw, {"certificate_pem": old.pem})
    if status != 200:
        return status, answer
    key = new_key or generate_private_key()
    csr = build_csr(key, SpiffeId.parse(identity or str(_spiffe_of(old)))).decode()
    message = possession_message(old.cert, csr, answer["challenge"], TD)
    return post(
        gw,
        {
            "certificate_pem": old.pem,
            "csr": csr,
            "challenge": answer["challenge"],
            "signature": sign_possession(old.key, message),
        },
    )


def _spiffe_of(h: Held) -> SpiffeId:
    from raywarden.pki.certs import spiffe_id_of

    return spiffe_id_of(h.cert)


def events(gw: Gateway, name: str) -> list[dict[str, Any]]:
    return [r for r in gw.records() if r.get("kind") == "identity" and r.get("event") == name]


# -- renewal with the current certificate ------------------------------------------------------------------


def test_renewal_answers_the_certificate_and_the_ca_and_supersedes_the_old_one(gateway: Gateway) -> None:
    old = held(gateway, "alice", kind="user")
    with gateway.with_certificate(old.der):
        resp = gateway.client.post(
            "/raywarden/v1/renew",
            json={"csr": build_csr(generate_private_key(), SpiffeId.parse(spiffe("alice"))).decode()},
        )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["ca"]["sha256"] == fingerprint(
        old.cert.issuer and x509.load_pem_x509_certificate(gateway.state.access_ca_cert.read_bytes())
    )
    record = RenewalStore(gateway.store).certificate(serial_hex(old.cert))
    assert record is not None and record.superseded_by == body["serial"]
    assert RenewalStore(gateway.store).certificate(body["serial"]).issuer_sha256 == body["ca"]["sha256"]  # type: ignore[union-attr]


def test_a_renewable_accounts_certificate_renews_once(gateway: Gateway) -> None:
    old = held(gateway, "ci-bot")
    renewable(gateway, "ci-bot")
    csr = lambda: build_csr(generate_private_key(), SpiffeId.parse(spiffe("ci-bot", "sa"))).decode()  # noqa: E731
    with gateway.with_certificate(old.der):
        first = gateway.client.post("/raywarden/v1/renew", json={"csr": csr()})
        second = gateway.client.post("/raywarden/v1/renew", json={"csr": csr()})
    assert first.status_code == 200
    assert second.status_code == 403 and "renewed already" in second.json()["error"]
    assert "sa code ci-bot" in second.json()["hint"]
    # Both holders lose everything: the copy and the certificate issued by the first renewal.
    assert RenewalStore(gateway.store).certificate(first.json()["serial"]).revoked  # type: ignore[union-attr]
    [alert] = events(gateway, "cert.reuse")
    assert alert["alert"] is True and alert["serial"] == serial_hex(old.cert)
    gateway.audited(second.json()["request_id"], "allow", 403)


def test_a_persons_certificate_renews_once_and_a_second_renewal_says_how_to_go_on(gateway: Gateway) -> None:
    old = held(gateway, "alice", kind="user")
    csr = lambda: build_csr(generate_private_key(), SpiffeId.parse(spiffe("alice"))).decode()  # noqa: E731
    with gateway.with_certificate(old.der):
        first = gateway.client.post("/raywarden/v1/renew", json={"csr": csr()})
        second = gateway.client.post("/raywarden/v1/renew", json={"csr": csr()})
    assert first.status_code == 200
    assert second.status_code == 409 and "renewed already" in second.json()["error"]
    # A lost answer has a way out (log in again); a copied key has another (revoke the old serial).
    assert "raywarden login" in second.json()["hint"] and f"revoke cert {serial_hex(old.cert)}" in second.json()["hint"]
    gateway.audited(second.json()["request_id"], "allow", 409)
    outcome = gateway.records_of(second.json()["request_id"])[1]
    assert outcome["alert"] is True and outcome["superseded_by"] == first.json()["serial"]
    # A person's renewals are not an alarm that revokes everything: the first renewal still works.
    assert events(gateway, "cert.reuse") == []
    assert not RenewalStore(gateway.store).certificate(first.json()["serial"]).revoked  # type: ignore[union-attr]


def test_a_renewal_is_not_recorded_once_the_person_is_disabled(gateway: Gateway) -> None:
    old = held(gateway, "alice", kind="user")
    renewals = RenewalStore(gateway.store)
    gateway.store.set_disabled(spiffe("alice"), True)  # between authenticating and recording
    renewed = RenewedCertificate("abc123", spiffe("alice"), old.cert.not_valid_after_utc, None)
    assert renewals.record_renewal(serial_hex(old.cert), renewed) == "disabled"
    assert renewals.certificate("abc123") is None  # unknown to the store, so refused everywhere
    gateway.store.set_disabled(spiffe("alice"), False)
    gateway.store.revoke_certificate(serial_hex(old.cert), "test")
    assert renewals.record_renewal(serial_hex(old.cert), renewed) == "revoked"
    assert renewals.certificate("abc123") is None


# -- an expired certificate, renewed by proof of possession ---------------------------------------------------


def test_an_expired_certificate_of_a_renewable_account_renews(gateway: Gateway) -> None:
    old = held(gateway, "ci-bot", ago=dt.timedelta(days=2))  # expired 36 hours ago
    renewable(gateway, "ci-bot")
    status, body = renew_expired(gateway, old)
    assert status == 200, body
    new = x509.load_pem_x509_certificate(body["certificate_pem"].encode())
    assert new.not_valid_after_utc > dt.datetime.now(dt.timezone.utc) and body["ca"]["trusted_pem"]
    [record] = events(gateway, "cert.renew_expired")
    assert record["previous_serial"] == serial_hex(old.cert) and record["serial"] == body["serial"]
    gateway.audited(body["request_id"], "allow", 200)
    assert RenewalStore(gateway.store).certificate(serial_hex(old.cert)).superseded_by == body["serial"]  # type: ignore[union-attr]


def test_a_replayed_proof_is_refused(gateway: Gateway) -> None:
    old = held(gateway, "ci-bot", ago=dt.timedelta(days=1))
    renewable(gateway, "ci-bot")
    _, challenge = post(gateway, {"certificate_pem": old.pem})
    csr = build_csr(generate_private_key(), SpiffeId.parse(spiffe("ci-bot", "sa"))).decode()
    proof = {
        "certificate_pem": old.pem,
        "csr": csr,
        "challenge": challenge["challenge"],
        "signature": sign_possession(old.key, possession_message(old.cert, csr, challenge["challenge"], TD)),
    }
    assert post(gateway, proof)[0] == 200
    status, body = post(gateway, proof)
    assert status == 401 and "challenge" in body["error"]
    gateway.audited(body["request_id"], "deny", 401)


def test_the_expired_certificate_presented_again_with_its_key_revokes_everything(gateway: Gateway) -> None:
    old = held(gateway, "ci-bot", ago=dt.timedelta(days=1))
    renewable(gateway, "ci-bot")
    status, renewed = renew_expired(gateway, old)
    assert status == 200
    status, body = renew_expired(gateway, old)  # a copy of the old key, renewing again
    assert status == 403 and "every certificate and token of ci-bot is now revoked" in body["error"]
    assert RenewalStore(gateway.store).certificate(renewed["serial"]).revoked  # type: ignore[union-attr]
    assert events(gateway, "cert.reuse")[0]["superseded_by"] == renewed["serial"]


def test_a_copy_of_the_certificate_without_its_key_revokes_nothing(gateway: Gateway) -> None:
    old = held(gateway, "ci-bot", ago=dt.timedelta(days=1))
    renewable(gateway, "ci-bot")
    assert renew_expired(gateway, old)[0] == 200
    mallory = Held(old.cert, generate_private_key())
    status, body = renew_expired(gateway, mallory)
    assert status == 401 and body["error"] == "proof of possession failed"
    assert events(gateway, "cert.reuse") == []


@pytest.mark.parametrize(
    ("setup", "status", "error", "hint"),
    [
        ("not-renewable", 403, "not renewable after they expire", "sa renewal ci-bot --grace"),
        (
            "past-grace",
            403,
            "expired 9 days ago; expired certificates of this account renew within 7 days",
            "sa code ci-bot",
        ),
        ("user", 403, "only service accounts", "user code"),
        ("revoked", 403, "cannot be renewed", "sa code ci-bot"),
        ("disabled", 403, "cannot be renewed", "sa code ci-bot"),
        ("newer", 403, "a newer certificate was issued", "sa code ci-bot"),
        ("foreign", 401, "not issued by a CA this gateway trusts", "rotated"),
    ],
)
def test_renewal_that_is_impossible_says_why_and_what_to_do(
    gateway: Gateway, setup: str, status: int, error: str, hint: str
) -> None:
    kind = "user" if setup == "user" else "sa"
    ago = dt.timedelta(days=9, hours=12) if setup == "past-grace" else dt.timedelta(days=1)
    old = held(gateway, "ci-bot", kind=kind, ago=ago)
    if setup != "not-renewable" and kind == "sa":
        renewable(gateway, "ci-bot")
    if setup == "revoked":
        gateway.store.revoke_certificate(serial_hex(old.cert), "test")
    if setup == "disabled":
        gateway.store.set_disabled(spiffe("ci-bot", "sa"), True)
    if setup == "newer":
        held(gateway, "ci-bot")
    if setup == "foreign":
        other = CertificateAuthority.create("access", TD, years=1)
        with clock(dt.datetime.now(dt.timezone.utc) - ago):
            old = Held(
                other.issue(old.key.public_key(), SpiffeId(TD, "sa", "ci-bot"), lifetime=dt.timedelta(hours=12)),
                old.key,
            )
    got, body = renew_expired(gateway, old)
    assert got == status and error in body["error"], body
    assert hint in body.get("hint", ""), body
    record = gateway.audited(body["request_id"], "deny", status)
    assert record["reason"].startswith("renew-expired")


def test_bad_proofs_are_refused_and_counted(gateway: Gateway) -> None:
    old = held(gateway, "ci-bot", ago=dt.timedelta(days=1))
    renewable(gateway, "ci-bot")
    csr = build_csr(generate_private_key(), SpiffeId.parse(spiffe("ci-bot", "sa"))).decode()
    statuses = []
    for _ in range(10):
        _, challenge = post(gateway, {"certificate_pem": old.pem})
        wrong = sign_possession(generate_private_key(), possession_message(old.cert, csr, challenge["challenge"], TD))
        statuses.append(
            post(
                gateway,
                {"certificate_pem": old.pem, "csr": csr, "challenge": challenge["challenge"], "signature": wrong},
            )[0]
        )
    assert statuses == [401] * 10
    status, body = post(gateway, {"certificate_pem": old.pem})
    assert status == 429 and "too many" in body["error"]


def test_the_csr_must_be_for_the_same_account_with_a_new_key(gateway: Gateway) -> None:
    old = held(gateway, "ci-bot", ago=dt.timedelta(days=1))
    renewable(gateway, "ci-bot")
    status, body = renew_expired(gateway, old, identity=spiffe("admin"))
    assert status == 403 and "its own identity" in body["error"]
    status, body = renew_expired(gateway, old, new_key=old.key)
    assert status == 400 and "new key" in body["error"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"certificate_pem": 5},
        {"certificate_pem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"},
        {"certificate_pem": "x" * 20000},
        {"certificate_pem": None, "challenge": "x"},
    ],
)
def test_malformed_requests_are_400(gateway: Gateway, body: dict[str, Any]) -> None:
    status, answer = post(gateway, body)
    assert status == 400 and answer["error"]
    gateway.audited(answer["request_id"], "deny", 400)


def test_missing_proof_fields_are_400(gateway: Gateway) -> None:
    old = held(gateway, "ci-bot", ago=dt.timedelta(days=1))
    renewable(gateway, "ci-bot")
    for extra in (
        {"challenge": "x"},
        {"challenge": "x", "csr": "y", "signature": ""},
        {"challenge": ["x"], "csr": 1, "signature": 2},
    ):
        status, answer = post(gateway, {"certificate_pem": old.pem, **extra})
        assert status == 400, answer


# -- across a CA rotation -----------------------------------------------------------------------------------


def test_renewal_across_an_access_ca_rotation(gateway: Gateway) -> None:
    old = held(gateway, "ci-bot", ago=dt.timedelta(days=1))
    renewable(gateway, "ci-bot")
    config = gateway.state.load_config()
    [step] = rotate(gateway.state, config, "access", actor="test", overlap=dt.timedelta(days=7))
    ca = gateway.client.get("/raywarden/v1/ca").json()
    assert ca["sha256"] == step.new_sha256 and len(ca["rollovers"]) == 1 and len(ca["trusted_pem"]) == 2
    status, body = renew_expired(gateway, old)  # a certificate from the old CA, during the overlap
    assert status == 200, body
    new = x509.load_pem_x509_certificate(body["certificate_pem"].encode())
    assert fingerprint(x509.load_pem_x509_certificate(ca["access_ca_pem"].encode())) == step.new_sha256
    assert new.issuer == x509.load_pem_x509_certificate(ca["access_ca_pem"].encode()).subject
    rotate(gateway.state, config, "access", actor="test", overlap=dt.timedelta(days=7), finish=True, force=True)
    other = held(gateway, "ci-bot2", ago=dt.timedelta(days=1))  # issued by the new CA: still fine
    renewable(gateway, "ci-bot2")
    assert renew_expired(gateway, other)[0] == 200
    stale = Held(old.cert, old.key)
    gateway.store.revoke_certificate(body["serial"], "test")
    status, answer = renew_expired(gateway, stale)
    assert status == 401 and "not issued by a CA this gateway trusts" in answer["error"]
    assert len(gateway.client.get("/raywarden/v1/ca").json()["trusted_pem"]) == 1

"""Bearer tokens minted with a client certificate name it (``cert_serial``) and end with it: revoking the
certificate (`raywarden revoke cert`, `logout`, `user disable`) stops them on their next request, and none
outlives the certificate. The attack replayed: a copied key's certificate is revoked, and the token cached
next to the key (token.json) must stop working too. tests/integration/identity/test_token_binding.py replays
it with the real CLI against a real cluster."""

from __future__ import annotations

import datetime as dt
import secrets
import time
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from raywarden.errors import UsageError
from raywarden.gateway.handlers import websocket
from raywarden.gateway.tokens import CERT_CLAIM, MintingCertificate, load_or_create_token_key, token_key_path
from raywarden.identity.admin import IdentityAdmin
from raywarden.pki import ca_keys
from raywarden.pki.certs import serial_hex
from tests.unit.gateway.conftest import WS_URL, Gateway, spiffe

pytestmark = pytest.mark.unit

TOKEN = "/raywarden/v1/token"
WHOAMI = "/raywarden/v1/whoami"
LOGOUT = "/raywarden/v1/logout"


def _mint(gateway: Gateway, der: bytes, **body: Any) -> dict[str, Any]:
    """`POST /raywarden/v1/token` over mutual TLS with ``der``, as `raywarden token` and `raywarden job` do."""
    with gateway.with_certificate(der):
        resp = gateway.client.post(TOKEN, json=body)
    assert resp.status_code == 200, resp.text
    answer: dict[str, Any] = resp.json()
    return answer


def _bearer(answer: dict[str, Any]) -> dict[str, str]:
    return {"authorization": f"Bearer {answer['token']}"}


def _claims(answer: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = jwt.decode(answer["token"], options={"verify_signature": False})
    return found


def _serial(der: bytes) -> str:
    return serial_hex(x509.load_der_x509_certificate(der))


def _own_token(gateway: Gateway, name: str, claims: dict[str, Any], *, issued_by: str | None = None) -> str:
    """A token signed with the cluster's real key and recorded in the store (as the gateway records the ones it
    mints), with claims no current gateway would write: what an older release issued, or a bug would."""
    ident = spiffe(name)
    now = int(time.time())
    jti = secrets.token_hex(16)
    full = {
        "iss": gateway.tokens.issuer,
        "sub": ident,
        "aud": gateway.tokens.audience,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": jti,
        **claims,
    }
    gateway.store.record_token(jti, ident, float(full["exp"]), issued_by=issued_by or ident)
    token: str = jwt.encode(full, _signing_key(gateway), algorithm="EdDSA", headers={"kid": gateway.tokens.kid})
    return token


def _signing_key(gateway: Gateway) -> Ed25519PrivateKey:
    return load_or_create_token_key(token_key_path(gateway.state))


def _refused(gateway: Gateway, headers: dict[str, str], path: str = "/api/jobs/") -> tuple[dict[str, Any], str]:
    """The 401 a request with ``headers`` gets: what the caller is shown, and the reason in the audit log."""
    resp = gateway.client.get(path, headers=headers)
    assert resp.status_code == 401, resp.text
    shown: dict[str, Any] = resp.json()
    record = gateway.audited(shown["request_id"], "deny", 401)
    return shown, str(record["reason"])


def test_a_token_names_the_certificate_it_was_minted_with(gateway: Gateway) -> None:
    der = gateway.certificate("nina", "developers")
    answer = _mint(gateway, der)
    claims = _claims(answer)
    assert claims[CERT_CLAIM] == _serial(der) == answer["cert_serial"]
    assert answer["capped_by_certificate"] is False
    resp = gateway.client.get("/api/jobs/", headers=_bearer(answer))
    assert resp.status_code == 200
    record = gateway.audited(resp.headers["x-request-id"], "allow", 200)
    assert record["auth_method"] == "token" and record["jti"] == answer["jti"] and record["minted_with"] == _serial(der)
    me = gateway.client.get(WHOAMI, headers=_bearer(answer)).json()
    assert me["auth_method"] == "token" and me["minted_with_cert_serial"] == _serial(der)
    issue = [r for r in gateway.records() if r.get("event") == "token.issue"][-1]
    assert issue["cert_serial"] == _serial(der) and issue["jti"] == answer["jti"]


def test_revoking_the_certificate_refuses_the_token_minted_with_it(gateway: Gateway) -> None:
    """The attack: after `raywarden revoke cert SERIAL` the cached token lists and submits nothing."""
    der = gateway.certificate("carol", "developers")
    answer = _mint(gateway, der, ttl_seconds=3000)
    token = _bearer(answer)
    assert gateway.client.get("/api/jobs/", headers=token).status_code == 200
    IdentityAdmin(gateway.state, actor="test").revoke_cert(_serial(der), "keyCompromise")

    shown, reason = _refused(gateway, token)
    assert shown["reason"] == f"your bearer token was issued with client certificate {_serial(der)}, which is revoked"
    assert f"token id {answer['jti']} was minted with certificate {_serial(der)}, which is revoked" == reason
    submit = gateway.client.post(
        "/api/jobs/", json={"entrypoint": "echo stolen", "submission_id": "carol-after-revoke"}, headers=token
    )
    assert submit.status_code == 401
    gateway.audited(submit.headers["x-request-id"], "deny", 401)
    assert gateway.ray.find("carol-after-revoke") is None
    assert gateway.ray.requests(method="POST", path="/api/jobs/") == []
    # Nor does the token get a new certificate or a new token in its place.
    with_token = gateway.client.post(TOKEN, json={}, headers=token)
    assert with_token.status_code == 401


def test_every_token_of_the_certificate_stops_and_others_go_on(gateway: Gateway) -> None:
    revoked, kept = gateway.certificate("dan", "developers"), gateway.certificate("dan", "developers")
    first, second, other = _mint(gateway, revoked), _mint(gateway, revoked), _mint(gateway, kept)
    sa = gateway.bearer("ci-bot", "developers", kind="sa")  # minted by an administrator, no certificate
    gateway.store.revoke_certificate(_serial(revoked), "test")
    for answer in (first, second):
        assert gateway.client.get(WHOAMI, headers=_bearer(answer)).status_code == 401
    assert gateway.client.get(WHOAMI, headers=_bearer(other)).json()["minted_with_cert_serial"] == _serial(kept)
    assert gateway.client.get(WHOAMI, headers=sa).status_code == 200


def test_logout_ends_the_tokens_minted_with_its_certificate_named_or_not(gateway: Gateway) -> None:
    der = gateway.certificate("lena", "developers")
    cached, forgotten = _mint(gateway, der), _mint(gateway, der)
    with gateway.with_certificate(der):
        assert gateway.client.post(LOGOUT, json={"jti": cached["jti"]}).status_code == 200
    assert gateway.store.token_owner(forgotten["jti"]) == (spiffe("lena"), False)  # only the named one's id
    for answer in (cached, forgotten):
        assert gateway.client.get(WHOAMI, headers=_bearer(answer)).status_code == 401


def test_disabling_the_principal_ends_its_tokens(gateway: Gateway) -> None:
    der = gateway.certificate("eve", "developers")
    answer = _mint(gateway, der)
    IdentityAdmin(gateway.state, actor="test").disable("user", "eve")
    shown, reason = _refused(gateway, _bearer(answer))
    assert "revoked" in reason and "reason" in shown


def test_a_token_is_capped_at_its_certificates_expiry(gateway: Gateway) -> None:
    der = gateway.certificate("hal", "developers")  # valid for an hour
    not_after = x509.load_der_x509_certificate(der).not_valid_after_utc
    long = _mint(gateway, der, ttl_seconds=12 * 3600)
    assert long["capped_by_certificate"] is True
    assert dt.datetime.fromisoformat(long["expires_at"]) == not_after
    assert _claims(long)["exp"] == int(not_after.timestamp())
    issue = [r for r in gateway.records() if r.get("event") == "token.issue"][-1]
    assert issue["capped_by_certificate"] is True
    short = _mint(gateway, der, ttl_seconds=600)
    assert short["capped_by_certificate"] is False and _claims(short)["exp"] - _claims(short)["iat"] == 600
    # The lifetime limit still applies before the cap.
    with gateway.with_certificate(der):
        assert gateway.client.post(TOKEN, json={"ttl_seconds": 13 * 3600}).status_code == 400


def test_a_token_that_outlives_its_certificate_is_refused(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """No gateway mints one (the cap), but the check does not rely on that: a token still within its exp whose
    certificate has expired is refused."""
    with monkeypatch.context() as patched:
        patched.setattr(ca_keys, "_now", lambda: dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2))
        der = gateway.certificate("otis", "developers")
    token = _own_token(gateway, "otis", {CERT_CLAIM: _serial(der)})
    shown, reason = _refused(gateway, {"authorization": f"Bearer {token}"})
    assert f"outlives certificate {_serial(der)}" in reason and "expired at" in shown["reason"]
    # And the authority itself will not mint past an expired certificate.
    with pytest.raises(UsageError, match="expires before"):
        gateway.tokens.issue(spiffe("otis"), minted_with=MintingCertificate(_serial(der), time.time() - 1))


@pytest.mark.parametrize(
    ("claim", "reason"),
    [
        ("ffff0000ffff", "which this cluster never issued"),
        ("FFFF", "is not a certificate serial"),
        ("f" * 65, "is not a certificate serial"),
        (12345, "is not a certificate serial"),
        ("", "is not a certificate serial"),
        ("ab cd", "is not a certificate serial"),
        (["ab"], "is not a certificate serial"),
    ],
)
def test_a_token_naming_no_real_certificate_is_refused(gateway: Gateway, claim: object, reason: str) -> None:
    gateway.principal("rex", "developers")
    token = _own_token(gateway, "rex", {CERT_CLAIM: claim})
    shown, found = _refused(gateway, {"authorization": f"Bearer {token}"})
    assert reason in found and "reason" not in shown  # nothing a forger learns


def test_a_token_naming_another_principals_certificate_is_refused(gateway: Gateway) -> None:
    theirs = gateway.certificate("pat", "developers")
    gateway.principal("quin", "developers")
    token = _own_token(gateway, "quin", {CERT_CLAIM: _serial(theirs)})
    _, reason = _refused(gateway, {"authorization": f"Bearer {token}"})
    assert f"names certificate {_serial(theirs)} of {spiffe('pat')}" in reason


def test_an_older_releases_self_minted_token_is_refused_and_an_sa_token_is_not(gateway: Gateway) -> None:
    """Tokens minted over mutual TLS by a release that did not bind them cannot be stopped by revoking the
    certificate: they are refused (the CLI replaces its cached one). Administrators' tokens never had one."""
    gateway.principal("old", "developers")
    legacy = _own_token(gateway, "old", {})
    shown, reason = _refused(gateway, {"authorization": f"Bearer {legacy}"})
    assert "predates tokens bound to their certificate" in shown["reason"] and "raywarden token" in shown["reason"]
    assert "minted with a certificate it does not name" in reason
    by_admin = _own_token(gateway, "old", {}, issued_by="local:0 (spiffe://td.test/user/admin)")
    assert gateway.client.get(WHOAMI, headers={"authorization": f"Bearer {by_admin}"}).status_code == 200


def test_an_sa_token_is_revoked_by_its_id(gateway: Gateway) -> None:
    admin = IdentityAdmin(gateway.state, actor="test")
    admin.add("sa", "nightly", ["developers"])
    issued = admin.sa_token("nightly", 600)
    headers = {"authorization": f"Bearer {issued.token.reveal()}"}
    assert CERT_CLAIM not in jwt.decode(issued.token.reveal(), options={"verify_signature": False})
    assert gateway.client.get(WHOAMI, headers=headers).status_code == 200
    admin.revoke_token(issued.jti, "test")
    shown, reason = _refused(gateway, headers)
    assert shown["reason"] == "your bearer token is revoked" and "is revoked" in reason


def test_a_log_tail_opened_with_a_token_ends_when_its_certificate_is_revoked(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(websocket, "RECHECK_EVERY_S", 0.2)
    der = gateway.certificate("tailor", "developers")
    token = _bearer(_mint(gateway, der))
    gateway.ray.add_job("endless-3", spiffe("tailor"))
    with gateway.client.websocket_connect(f"{WS_URL}/api/jobs/endless-3/logs/tail", headers=token) as ws:
        assert ws.receive_text() == "tail of endless-3\n"
        gateway.store.revoke_certificate(_serial(der), "test")
        code = None
        while code is None:
            message = ws.receive()
            code = message.get("code") if message["type"] == "websocket.close" else None
    assert code == 1008

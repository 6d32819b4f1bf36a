"""Bearer tokens at the authenticator: every refusal named in the identities issue, with its reason."""

from __future__ import annotations

import base64
import json
import time
from asyncio import run
from collections.abc import Callable

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from raywarden.errors import AuthenticationError
from raywarden.gateway.authn import Authenticator
from raywarden.gateway.tokens import TokenAuthority, load_or_create_token_key, parse_ttl, token_key_path
from raywarden.identity.admin import IdentityAdmin
from raywarden.identity.store import IdentityStore
from raywarden.state import StateDir

pytestmark = pytest.mark.unit


def _auth(state: StateDir) -> Authenticator:
    return Authenticator.from_state(state, state.load_config(), IdentityStore.open(state.identity_db))


def _sa_token(state: StateDir, name: str = "ci-bot") -> tuple[str, str]:
    admin = IdentityAdmin(state, actor="test")
    if admin.store.get(str(admin.spiffe("sa", name))) is None:
        admin.add("sa", name, ["developers"])
    issued = admin.sa_token(name, 600)
    return issued.token.reveal(), issued.jti


def _forge(
    state: StateDir,
    claims_change: dict[str, object],
    *,
    key: Ed25519PrivateKey | None = None,
    headers: dict[str, object] | None = None,
    alg: str = "EdDSA",
) -> str:
    authority = TokenAuthority.for_state(state, state.load_config())
    good, _ = _sa_token(state)
    claims = jwt.decode(good, options={"verify_signature": False})
    claims.update(claims_change)
    signing = key or load_or_create_token_key(token_key_path(state))
    return jwt.encode(claims, signing, algorithm=alg, headers={"kid": authority.kid, **(headers or {})})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _reason(auth: Authenticator, token: str) -> str:
    with pytest.raises(AuthenticationError) as refused:
        run(auth.authenticate(None, f"Bearer {token}"))
    assert refused.value.message == "authentication failed"
    return refused.value.reason


def test_valid_token_authenticates(state: StateDir) -> None:
    token, jti = _sa_token(state)
    identity = run(_auth(state).authenticate(None, f"Bearer {token}"))
    assert identity.spiffe_id.endswith("/sa/ci-bot") and identity.auth_method == "token"
    assert identity.credential_id == jti and identity.groups == ("developers",)
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert header["alg"] == "EdDSA" and set(claims) >= {"iss", "sub", "aud", "exp", "iat", "nbf", "jti"}


def test_key_file_is_private_and_stable(state: StateDir) -> None:
    key = load_or_create_token_key(token_key_path(state))
    assert token_key_path(state).stat().st_mode & 0o777 == 0o600
    again = load_or_create_token_key(token_key_path(state))
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert key.public_key().public_bytes(*raw) == again.public_key().public_bytes(*raw)


def _alg_none(state: StateDir) -> str:
    good, _ = _sa_token(state)
    _, payload, _ = good.split(".")
    return _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode()) + "." + payload + "."


def _hmac_with_public_key(state: StateDir) -> str:
    good, _ = _sa_token(state)
    claims = jwt.decode(good, options={"verify_signature": False})
    public = (
        load_or_create_token_key(token_key_path(state))
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": TokenAuthority.for_state(state, state.load_config()).kid}
    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    import hashlib
    import hmac

    return signing_input + "." + _b64(hmac.new(public, signing_input.encode(), hashlib.sha256).digest())


def _tampered(state: StateDir) -> str:
    good, _ = _sa_token(state)
    head, payload, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = claims["sub"].replace("ci-bot", "admin")
    return f"{head}.{_b64(json.dumps(claims).encode())}.{sig}"


CASES: list[tuple[str, Callable[[StateDir], str], str]] = [
    ("alg none", _alg_none, "algorithm 'none' refused"),
    ("HMAC keyed with the public key", _hmac_with_public_key, "algorithm 'HS256' refused"),
    ("tampered claims", _tampered, "signature does not verify"),
    ("foreign key, our kid", lambda s: _forge(s, {}, key=Ed25519PrivateKey.generate()), "signature does not verify"),
    ("unknown kid", lambda s: _forge(s, {}, headers={"kid": "feedface"}), "unknown token key id"),
    ("wrong audience", lambda s: _forge(s, {"aud": "raywarden-gateway:other"}), "audience"),
    ("wrong issuer", lambda s: _forge(s, {"iss": "raywarden:evil"}), "issuer is wrong"),
    ("expired", lambda s: _forge(s, {"exp": int(time.time()) - 120}), "expired"),
    ("not yet valid", lambda s: _forge(s, {"nbf": int(time.time()) + 600}), "not yet valid"),
    ("no jti", lambda s: _forge(s, {"jti": None}), "jti"),
    ("jti never issued", lambda s: _forge(s, {"jti": "0" * 32}), "never issued"),
    ("lifetime beyond the maximum", lambda s: _forge(s, {"exp": int(time.time()) + 30 * 86400}), "maximum"),
    ("node subject", lambda s: _forge(s, {"sub": "spiffe://unit.raywarden/node/head"}), "node tokens"),
    ("not a JWT", lambda s: "abc.def", "not a JWT"),
    ("a good token with base64 padding", lambda s: _sa_token(s)[0] + "==", "not a JWT in compact form"),
    ("a good token with a padded header", lambda s: "==.".join(_sa_token(s)[0].split(".", 1)), "compact form"),
]


@pytest.mark.parametrize(("make", "reason"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_tokens_refused_with_precise_reason(state: StateDir, make: Callable[[StateDir], str], reason: str) -> None:
    token = make(state)
    assert reason in _reason(_auth(state), token)


def test_clock_skew_allowance(state: StateDir) -> None:
    _, jti = _sa_token(state)
    token = _forge(state, {"exp": int(time.time()) - 5, "jti": jti})
    assert run(_auth(state).authenticate(None, f"Bearer {token}")).auth_method == "token"


def test_revoked_token_and_disabled_principal(state: StateDir) -> None:
    auth = _auth(state)
    admin = IdentityAdmin(state, actor="test")
    token, jti = _sa_token(state)
    run(auth.authenticate(None, f"Bearer {token}"))
    admin.revoke_token(jti, "test")
    assert "revoked" in _reason(auth, token)
    token2, _ = _sa_token(state)
    run(auth.authenticate(None, f"Bearer {token2}"))
    admin.disable("sa", "ci-bot")
    assert "revoked" in _reason(auth, token2)
    # A fresh authenticator (a restarted gateway) reads the same revocations from disk.
    assert "revoked" in _reason(_auth(state), token2)


def test_other_schemes_and_precedence(state: StateDir) -> None:
    auth = _auth(state)
    with pytest.raises(AuthenticationError) as refused:
        run(auth.authenticate(None, "Basic YWxpY2U6cHc="))
    assert "scheme" in refused.value.reason
    # A client certificate takes precedence over whatever Authorization header comes with it.
    from cryptography import x509

    pem = (state.root.parent / "home" / "profiles" / "unit" / "client.crt").read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    identity = run(auth.authenticate(der, "Bearer garbage"))
    assert identity.auth_method == "certificate" and identity.name == "admin"


def test_ttl_parsing_and_limits(state: StateDir) -> None:
    assert parse_ttl("15m") == 900 and parse_ttl("1h") == 3600 and parse_ttl("90") == 90
    authority = TokenAuthority.for_state(state, state.load_config())
    from raywarden.errors import UsageError

    for bad in ("-1m", "soon", "0"):
        with pytest.raises(UsageError):
            authority.check_ttl(parse_ttl(bad))
    with pytest.raises(UsageError, match="outside"):
        authority.issue("spiffe://unit.raywarden/user/admin", 13 * 3600)
    assert authority.check_ttl(None) == 900


def test_a_remembered_token_is_refused_once_it_expires(state: StateDir) -> None:
    """The signature is checked once per token; its expiry on every use, with the same reason as PyJWT's."""
    config = state.load_config()
    authority = TokenAuthority(
        load_or_create_token_key(token_key_path(state)),
        cluster_id="c1",
        trust_domain=config.trust_domain,
        leeway_s=0,
        default_ttl_s=60,
        max_ttl_s=600,
    )
    issued = authority.issue(f"spiffe://{config.trust_domain}/sa/ci-bot", ttl_s=1)
    token = issued.token.reveal()
    claims = authority.verify(token, jwt.get_unverified_header(token))
    assert authority.recall(token) == claims
    assert authority.recall(token + "x") is None  # remembered by its exact text only
    while time.time() < issued.expires_at:
        time.sleep(0.2)
    with pytest.raises(AuthenticationError) as refused:
        authority.recall(token)
    assert refused.value.reason.startswith("token expired") and "expired" in (refused.value.public or "")
    assert authority.recall(token) is None  # forgotten: verifying it again refuses it the same way
    with pytest.raises(AuthenticationError) as again:
        authority.verify(token, jwt.get_unverified_header(token))
    assert again.value.reason == refused.value.reason

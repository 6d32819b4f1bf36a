"""OIDC ID tokens as bearer credentials, verified against a real local JWKS server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import jwt
import pytest

from raywarden.errors import AuthenticationError
from raywarden.gateway.authn import Authenticator
from raywarden.gateway.oidc import oidc_config_path
from raywarden.identity.admin import IdentityAdmin
from raywarden.identity.store import IdentityStore
from raywarden.state import StateDir
from tests.oidc_support import Idp, running_idp

pytestmark = pytest.mark.unit


@pytest.fixture
def idp(state: StateDir) -> Iterator[Idp]:
    with running_idp() as server:
        server.add_key("k1")
        oidc_config_path(state).write_text(json.dumps(server.config()))
        yield server


def _auth(state: StateDir) -> Authenticator:
    return Authenticator.from_state(state, state.load_config(), IdentityStore.open(state.identity_db))


def _reason(auth: Authenticator, token: str) -> str:
    with pytest.raises(AuthenticationError) as refused:
        auth.authenticate(None, f"Bearer {token}")
    return refused.value.reason


def test_id_token_accepted_with_mapped_groups(state: StateDir, idp: Idp) -> None:
    identity = _auth(state).authenticate(None, f"Bearer {idp.id_token(groups=['eng', 'unmapped'])}")
    assert identity.spiffe_id == "spiffe://unit.raywarden/user/oidc-olga"
    assert identity.auth_method == "oidc" and identity.groups == ("developers",)
    assert idp.hits == 1


def test_registered_user_keeps_store_groups_and_disable_wins(state: StateDir, idp: Idp) -> None:
    admin = IdentityAdmin(state, actor="test")
    admin.add("user", "oidc-olga", ["viewers"])
    auth = _auth(state)
    assert auth.authenticate(None, f"Bearer {idp.id_token()}").groups == ("developers", "viewers")
    admin.disable("user", "oidc-olga")
    assert "disabled" in _reason(auth, idp.id_token())


def test_refusals(state: StateDir, idp: Idp) -> None:
    auth = _auth(state)
    assert "audience" in _reason(auth, idp.id_token(audience="someone-else"))
    assert "expired" in _reason(auth, idp.id_token(ttl=-120))
    assert "not a valid user name" in _reason(auth, idp.id_token(preferred_username="Not Valid!"))
    assert "unknown issuer" in _reason(auth, idp.id_token(iss="https://evil.example"))
    head, _, sig = idp.id_token().split(".")
    _, other_payload, _ = idp.id_token(preferred_username="admin").split(".")
    assert "signature" in _reason(auth, f"{head}.{other_payload}.{sig}")
    claims = jwt.decode(idp.id_token(), options={"verify_signature": False})
    hs = jwt.encode(claims, "x" * 32, algorithm="HS256", headers={"kid": "k1"})
    assert "algorithm 'HS256' not accepted" in _reason(auth, hs)


def test_unknown_kid_refetches_once_then_rate_limited(state: StateDir, idp: Idp) -> None:
    oidc_config_path(state).write_text(json.dumps(idp.config(min_refresh_s=0.5)))
    auth = _auth(state)
    auth.authenticate(None, f"Bearer {idp.id_token()}")
    assert idp.hits == 1
    idp.add_key("k2")  # key rotation at the IdP
    assert "rate-limited" in _reason(auth, idp.id_token("k2"))  # too soon after the last fetch
    time.sleep(0.6)  # then the unknown kid triggers one refetch
    assert auth.authenticate(None, f"Bearer {idp.id_token('k2')}").name == "oidc-olga"
    assert idp.hits == 2
    idp.add_key("k3", publish=False)  # a key the IdP never published
    assert "rate-limited" in _reason(auth, idp.id_token("k3"))
    assert "rate-limited" in _reason(auth, idp.id_token("k3"))
    assert idp.hits == 2


def test_unregistered_refused_when_issuer_requires_registration(state: StateDir, idp: Idp) -> None:
    oidc_config_path(state).write_text(json.dumps(idp.config(allow_unregistered=False)))
    assert "not registered" in _reason(_auth(state), idp.id_token())


def test_bad_configuration_fails_closed(state: StateDir, idp: Idp) -> None:
    oidc_config_path(state).write_text(json.dumps(idp.config(algorithms=["HS256"])))
    assert "OIDC configuration unusable" in _reason(_auth(state), idp.id_token())

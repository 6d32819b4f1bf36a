"""OIDC ID tokens as bearer credentials, verified against a real local JWKS server: each issuer's people in a
namespace of their own unless the issuer merges with local users, one JWKS fetch off the event loop however
many requests wait for it, and no second principal on a cluster whose Ray shares the control plane's user."""

from __future__ import annotations

import asyncio
import json
import time
from asyncio import run
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from raywarden.errors import AuthenticationError
from raywarden.gateway.authn import Authenticator, Identity
from raywarden.gateway.oidc import default_namespace, oidc_config_path
from raywarden.gateway.oidc_people import AdmissionRefused
from raywarden.identity.admin import IdentityAdmin
from raywarden.identity.names import OidcName, principal_kind, principal_name
from raywarden.identity.store import IdentityStore
from raywarden.state import StateDir
from tests.oidc_support import Idp, running_idp

pytestmark = pytest.mark.unit
TD = "unit.raywarden"


@pytest.fixture
def idp(state: StateDir) -> Iterator[Idp]:
    with running_idp() as server:
        server.add_key("k1")
        oidc_config_path(state).write_text(json.dumps(server.config()))
        yield server


def _auth(state: StateDir) -> Authenticator:
    return Authenticator.from_state(state, state.load_config(), IdentityStore.open(state.identity_db))


def _namespace(idp: Idp) -> str:
    return "127.0.0.1-" + idp.issuer.rsplit(":", 1)[1]


def _bearer(auth: Authenticator, token: str) -> Identity:
    return run(auth.authenticate(None, f"Bearer {token}"))


def _reason(auth: Authenticator, token: str) -> str:
    with pytest.raises(AuthenticationError) as refused:
        _bearer(auth, token)
    return refused.value.reason


def _configure(state: StateDir, *issuers: dict[str, Any], **top: Any) -> None:
    oidc_config_path(state).write_text(json.dumps({"issuers": list(issuers), **top}))


# -- namespaces ------------------------------------------------------------------------------------------------


def test_an_issuers_people_are_in_its_namespace_with_mapped_groups(state: StateDir, idp: Idp) -> None:
    identity = _bearer(_auth(state), idp.id_token(groups=["eng", "unmapped"]))
    namespace = _namespace(idp)
    assert identity.spiffe_id == f"spiffe://{TD}/oidc/{namespace}/oidc-olga"
    assert identity.name == f"{namespace}/oidc-olga" and identity.kind == "user"
    assert identity.auth_method == "oidc" and identity.groups == ("developers",)
    assert identity.expires_at is not None and identity.expires_at > time.time()
    assert idp.hits == 1
    # The SPIFFE ID keeps to the path rules and reads back as the same person.
    assert OidcName.parse(identity.spiffe_id) == OidcName(TD, namespace, "oidc-olga")
    assert principal_name(identity.spiffe_id) == identity.name and principal_kind(identity.spiffe_id) == "user"


def test_a_local_user_of_the_same_name_is_someone_else(state: StateDir, idp: Idp) -> None:
    admin = IdentityAdmin(state, actor="test")
    admin.add("user", "oidc-olga", ["admins"])
    auth = _auth(state)
    identity = _bearer(auth, idp.id_token())
    assert identity.spiffe_id != f"spiffe://{TD}/user/oidc-olga"
    assert identity.groups == ("developers",)  # not the local olga's admins
    admin.disable("user", "oidc-olga")  # the local user's state is not the OIDC person's either
    assert _bearer(auth, idp.id_token()).spiffe_id == identity.spiffe_id
    # The administrator's name from an issuer is not the administrator.
    assert "admins" not in _bearer(auth, idp.id_token(preferred_username="admin")).groups


def test_the_same_name_from_two_issuers_is_two_people(state: StateDir, idp: Idp) -> None:
    with running_idp() as other:
        other.add_key("k1")
        _configure(state, idp.config()["issuers"][0], other.config()["issuers"][0])
        auth = _auth(state)
        first, second = _bearer(auth, idp.id_token()), _bearer(auth, other.id_token())
    assert first.spiffe_id != second.spiffe_id
    assert {first.spiffe_id, second.spiffe_id} == {
        f"spiffe://{TD}/oidc/{_namespace(idp)}/oidc-olga",
        f"spiffe://{TD}/oidc/{_namespace(other)}/oidc-olga",
    }


def test_two_issuers_in_one_namespace_are_refused(state: StateDir, idp: Idp) -> None:
    with running_idp() as other:
        other.add_key("k1")
        one = {**idp.config()["issuers"][0], "namespace": "corp"}
        two = {**other.config()["issuers"][0], "namespace": "corp"}
        _configure(state, one, two)
        reason = _reason(_auth(state), idp.id_token())
    assert "OIDC configuration unusable" in reason and "share the namespace 'corp'" in reason


@pytest.mark.parametrize("namespace", ["a/b", "..", ".hidden", "Corp", "x" * 64, "a b", "ä"])
def test_a_namespace_outside_the_spiffe_path_rules_is_refused(state: StateDir, idp: Idp, namespace: str) -> None:
    _configure(state, {**idp.config()["issuers"][0], "namespace": namespace})
    assert "not a valid SPIFFE path segment" in _reason(_auth(state), idp.id_token())


def test_an_explicit_namespace_names_the_people(state: StateDir, idp: Idp) -> None:
    _configure(state, {**idp.config()["issuers"][0], "namespace": "corp"})
    identity = _bearer(_auth(state), idp.id_token())
    assert identity.spiffe_id == f"spiffe://{TD}/oidc/corp/oidc-olga" and identity.name == "corp/oidc-olga"


@pytest.mark.parametrize(
    ("issuer", "namespace"),
    [
        ("https://idp.example", "idp.example"),
        ("https://IdP.Example:8443/realms/a", "idp.example-8443"),
        ("http://127.0.0.1:5556", "127.0.0.1-5556"),
        ("https://[::1]:9000", "1-9000"),
        ("not a url", ""),
    ],
)
def test_default_namespace(issuer: str, namespace: str) -> None:
    assert default_namespace(issuer) == namespace


# -- merging with local users, opt-in --------------------------------------------------------------------------


def test_merging_is_opt_in_and_then_the_local_user_is_the_person(state: StateDir, idp: Idp) -> None:
    _configure(state, {**idp.config()["issuers"][0], "merge_local_users": True})
    admin = IdentityAdmin(state, actor="test")
    admin.add("user", "oidc-olga", ["viewers"])
    auth = _auth(state)
    identity = _bearer(auth, idp.id_token())
    assert identity.spiffe_id == f"spiffe://{TD}/user/oidc-olga" and identity.name == "oidc-olga"
    assert identity.groups == ("developers", "viewers")
    admin.disable("user", "oidc-olga")
    assert "disabled" in _reason(auth, idp.id_token())


def test_registered_only_needs_merging(state: StateDir, idp: Idp) -> None:
    _configure(state, {**idp.config()["issuers"][0], "allow_unregistered": False})
    reason = _reason(_auth(state), idp.id_token())
    assert "OIDC configuration unusable" in reason and "merge_local_users" in reason


def test_unregistered_refused_when_issuer_requires_registration(state: StateDir, idp: Idp) -> None:
    _configure(state, {**idp.config()["issuers"][0], "allow_unregistered": False, "merge_local_users": True})
    assert "not registered" in _reason(_auth(state), idp.id_token())


# -- refusals and the key set ------------------------------------------------------------------------------------


def test_refusals(state: StateDir, idp: Idp) -> None:
    auth = _auth(state)
    assert "audience" in _reason(auth, idp.id_token(audience="someone-else"))
    with pytest.raises(AuthenticationError) as expired:
        _bearer(auth, idp.id_token(ttl=-120))
    assert "expired" in expired.value.reason and expired.value.public and "expired" in expired.value.public
    assert "not a valid user name" in _reason(auth, idp.id_token(preferred_username="Not Valid!"))
    assert "not a valid user name" in _reason(auth, idp.id_token(preferred_username="../admin"))
    assert "unknown issuer" in _reason(auth, idp.id_token(iss="https://evil.example"))
    head, _, sig = idp.id_token().split(".")
    _, other_payload, _ = idp.id_token(preferred_username="admin").split(".")
    with pytest.raises(AuthenticationError) as forged:
        _bearer(auth, f"{head}.{other_payload}.{sig}")
    assert "signature" in forged.value.reason and forged.value.public is None  # a forger learns nothing
    claims = jwt.decode(idp.id_token(), options={"verify_signature": False})
    hs = jwt.encode(claims, "x" * 32, algorithm="HS256", headers={"kid": "k1"})
    assert "algorithm 'HS256' not accepted" in _reason(auth, hs)


def test_unknown_kid_refetches_once_then_rate_limited(state: StateDir, idp: Idp) -> None:
    oidc_config_path(state).write_text(json.dumps(idp.config(min_refresh_s=30)))
    auth = _auth(state)
    _bearer(auth, idp.id_token())
    assert idp.hits == 1
    idp.add_key("k2")  # key rotation at the IdP
    assert "rate-limited" in _reason(auth, idp.id_token("k2"))  # too soon after the last fetch
    assert auth.oidc is not None
    auth.oidc.jwks(idp.issuer).fetched_at = time.monotonic() - 31  # the limiter's window has passed
    # then the unknown kid triggers one refetch
    assert _bearer(auth, idp.id_token("k2")).name.endswith("/oidc-olga")
    assert idp.hits == 2
    idp.add_key("k3", publish=False)  # a key the IdP never published
    assert "rate-limited" in _reason(auth, idp.id_token("k3"))
    assert "rate-limited" in _reason(auth, idp.id_token("k3"))
    assert idp.hits == 2


def test_many_requests_for_a_new_key_share_one_fetch_and_the_loop_keeps_running(state: StateDir, idp: Idp) -> None:
    oidc_config_path(state).write_text(json.dumps(idp.config(min_refresh_s=0)))
    auth = _auth(state)
    _bearer(auth, idp.id_token())
    idp.add_key("k2")
    idp.jwks_delay_s = 0.5
    token = f"Bearer {idp.id_token('k2')}"

    async def scenario() -> tuple[list[Identity], int]:
        ticks, done = 0, asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        ticking = asyncio.ensure_future(ticker())
        found = await asyncio.gather(*(auth.authenticate(None, token) for _ in range(20)))
        done.set()
        await ticking
        return list(found), ticks

    found, ticks = run(scenario())
    assert idp.hits == 2  # twenty requests naming the new key: one fetch
    assert {i.spiffe_id for i in found} == {f"spiffe://{TD}/oidc/{_namespace(idp)}/oidc-olga"}
    assert ticks >= 3  # other work ran on the event loop while the key set was fetched


def test_a_failing_key_set_fails_every_waiter_with_one_fetch(state: StateDir, idp: Idp) -> None:
    oidc_config_path(state).write_text(json.dumps(idp.config(min_refresh_s=30)))
    idp.jwks_status = 503
    auth = _auth(state)

    async def scenario() -> list[BaseException | Identity]:
        token = f"Bearer {idp.id_token()}"
        return list(await asyncio.gather(*(auth.authenticate(None, token) for _ in range(5)), return_exceptions=True))

    results = run(scenario())
    assert all(isinstance(r, AuthenticationError) and "HTTP 503" in r.reason for r in results)
    assert idp.hits == 1
    idp.jwks_status = 200
    assert "rate-limited" in _reason(auth, idp.id_token())  # a dead endpoint is not hammered
    assert idp.hits == 1


def test_bad_configuration_fails_closed(state: StateDir, idp: Idp) -> None:
    oidc_config_path(state).write_text(json.dumps(idp.config(algorithms=["HS256"])))
    assert "OIDC configuration unusable" in _reason(_auth(state), idp.id_token())


# -- a cluster whose Ray shares the control plane's OS user -----------------------------------------------------


def _shared_user(state: StateDir, *, accepted: bool = False) -> None:
    config = state.load_config().model_copy(update={"ray_user": None, "shared_os_user": accepted})
    state.save_config(config)


def test_no_second_principal_where_ray_shares_the_control_planes_user(state: StateDir, idp: Idp) -> None:
    _shared_user(state)
    before = IdentityStore.open(state.identity_db).list_principals()
    auth = _auth(state)
    with pytest.raises(AdmissionRefused) as refused:
        _bearer(auth, idp.id_token())
    assert "admits one principal" in refused.value.reason and "oidc-olga" in refused.value.reason
    assert "administrator only" in (refused.value.public or "") and "--shared-os-user" in refused.value.hint
    assert IdentityStore.open(state.identity_db).list_principals() == before  # nothing was created
    # Through an issuer that merges, the one admin is still admitted.
    _configure(state, {**idp.config()["issuers"][0], "merge_local_users": True})
    assert _bearer(_auth(state), idp.id_token(preferred_username="admin")).spiffe_id == f"spiffe://{TD}/user/admin"
    with pytest.raises(AdmissionRefused):
        _bearer(_auth(state), idp.id_token(preferred_username="oidc-olga"))


def test_an_accepted_shared_user_admits_them(state: StateDir, idp: Idp) -> None:
    _shared_user(state, accepted=True)
    assert _bearer(_auth(state), idp.id_token()).groups == ("developers",)

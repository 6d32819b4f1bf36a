"""The per-request check of a client certificate's issuer (gateway/access_trust.py, gateway/authn.py): real
certificates from the cluster's access CA, a real access CA rotation on the state dir's files, a real store."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from raywarden.cluster.setup import init_state
from raywarden.config import ClusterConfig, Listen
from raywarden.errors import AuthenticationError
from raywarden.gateway.access_trust import AccessTrust
from raywarden.gateway.authn import Authenticator
from raywarden.identity.store import IdentityStore
from raywarden.pki.certs import fingerprint, load_cert, serial_hex
from raywarden.pki.keys import generate_private_key
from raywarden.pki.rollout import rotate
from raywarden.pki.spiffe import SpiffeId
from raywarden.pki.trust import CaFiles
from raywarden.state import StateDir

pytestmark = pytest.mark.unit
TD = "trust.test"
WEEK = dt.timedelta(days=7)


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StateDir:
    monkeypatch.setenv("RAYWARDEN_HOME", str(tmp_path / "home"))
    made = StateDir(tmp_path / "state")
    init_state(
        made,
        ClusterConfig(trust_domain=TD, listen=Listen(host="127.0.0.1", port=1)),
        admin_name="admin",
        profile_name="t",
    )
    return made


def _issue(state: StateDir, name: str) -> bytes:
    """A person's certificate from the access CA current now, recorded as issued; its DER."""
    authority = CaFiles(state, "access").load_current(TD)
    spiffe = SpiffeId(TD, "user", name)
    cert = authority.issue(generate_private_key().public_key(), spiffe, lifetime=dt.timedelta(hours=12))
    store = IdentityStore.open(state.identity_db)
    if store.get(str(spiffe)) is None:
        store.add_principal(spiffe, [], created_by="test")
    store.record_certificate(serial_hex(cert), str(spiffe), cert.not_valid_after_utc, issuer=authority.fingerprint)
    return cert.public_bytes(Encoding.DER)


def _authenticator(state: StateDir) -> tuple[Authenticator, AccessTrust]:
    trust = AccessTrust(state)
    return Authenticator(TD, IdentityStore.open(state.identity_db), access_trust=trust), trust


def test_certificates_of_a_dropped_access_ca_are_refused_on_the_next_request(state: StateDir) -> None:
    config = state.load_config()
    old_ca = fingerprint(load_cert(state.access_ca_cert))
    old = _issue(state, "olga")
    authn, trust = _authenticator(state)
    assert authn.from_certificate(old).name == "olga" and trust.trusted_issuer(old) == old_ca

    rotate(state, config, "access", actor="test", overlap=WEEK)
    new = _issue(state, "nina")
    assert trust.refresh(force=True) and trust.current.number == 1
    assert authn.from_certificate(old).name == "olga" and authn.from_certificate(new).name == "nina"

    rotate(state, config, "access", actor="test", overlap=WEEK, finish=True, force=True)
    assert trust.refresh(force=True) and trust.current.number == 2
    with pytest.raises(AuthenticationError) as refused:
        authn.from_certificate(old)
    assert "not issued by an access CA trusted now" in refused.value.reason
    assert refused.value.public is not None and "no longer trusts" in refused.value.public
    assert authn.from_certificate(new).name == "nina"
    assert trust.trusted_issuer(new) == fingerprint(load_cert(state.access_ca_cert))


def test_unchanged_files_keep_the_generation_and_a_foreign_ca_is_refused(state: StateDir, tmp_path: Path) -> None:
    authn, trust = _authenticator(state)
    assert not trust.refresh(force=True) and trust.current.number == 0
    other = StateDir(tmp_path / "other")
    init_state(
        other,
        ClusterConfig(trust_domain=TD, listen=Listen(host="127.0.0.1", port=1)),
        admin_name="admin",
        profile_name="other",
    )
    foreign = _issue(other, "olga")
    IdentityStore.open(state.identity_db).add_principal(SpiffeId(TD, "user", "olga"), [], created_by="test")
    with pytest.raises(AuthenticationError) as refused:
        authn.from_certificate(foreign)
    assert "not issued by an access CA trusted now" in refused.value.reason


def test_unreadable_trust_files_keep_the_last_good_set(state: StateDir) -> None:
    mine = _issue(state, "olga")
    authn, trust = _authenticator(state)
    state.access_ca_cert.write_bytes(b"not a certificate\n")
    assert not trust.refresh(force=True) and trust.current.number == 0
    assert authn.from_certificate(mine).name == "olga"

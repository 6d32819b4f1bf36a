"""API keys of service accounts (identity/apikeys.py): hashed, shown once, scoped, expiring, revocable."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from raywarden.errors import AuthenticationError
from raywarden.identity.apikeys import ApiKeys, check_app_name
from raywarden.identity.store import IdentityError, IdentityStore
from raywarden.pki.spiffe import SpiffeId

pytestmark = pytest.mark.unit
TD = "unit.test"


@pytest.fixture
def keys(tmp_path: Path) -> ApiKeys:
    store = IdentityStore.create(tmp_path / "identity.db")
    store.add_principal(SpiffeId(TD, "sa", "bot"), ["app-users"], created_by="test")
    store.add_principal(SpiffeId(TD, "user", "alice"), [], created_by="test")
    return ApiKeys(store)


BOT = f"spiffe://{TD}/sa/bot"


def test_a_key_verifies_as_its_account_with_its_scope_and_only_its_hash_is_kept(keys: ApiKeys) -> None:
    new = keys.create(BOT, ["echo", "echo", "llm"], 3600, created_by="admin")
    verified = keys.verify(new.key.reveal())
    assert verified.principal.spiffe_id == BOT and verified.principal.groups == ("app-users",)
    assert verified.apps == ("echo", "llm")
    secret = new.key.reveal().split("_", 2)[2]  # rwk_<id>_<secret>: the secret may hold "_" itself
    assert len(secret) == 43
    dump = "\n".join(sqlite3.connect(keys.store.path).iterdump())
    assert secret not in dump and new.key_id in dump


@pytest.mark.parametrize(
    "mangle",
    [
        lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"),  # wrong secret
        lambda k: "rwk_" + "0" * 16 + k[20:],  # unknown id
        lambda k: k[:30],  # truncated
        lambda k: k + "x",  # extended
        lambda k: k.upper(),
    ],
    ids=["wrong-secret", "unknown-id", "truncated", "extended", "upper"],
)
def test_forged_keys_are_refused(keys: ApiKeys, mangle: object) -> None:
    new = keys.create(BOT, [], 3600, created_by="admin")
    with pytest.raises(AuthenticationError):
        keys.verify(mangle(new.key.reveal()))  # type: ignore[operator]


def test_expired_revoked_and_disabled_keys_are_refused(keys: ApiKeys) -> None:
    new = keys.create(BOT, [], 60, created_by="admin")
    with pytest.raises(AuthenticationError) as expired:
        keys.verify(new.key.reveal(), now=new.expires_at + 1)
    assert "expired" in expired.value.reason
    assert keys.revoke(new.key_id, "test") and not keys.revoke(new.key_id, "again")
    with pytest.raises(AuthenticationError) as revoked:
        keys.verify(new.key.reveal())
    assert "revoked" in revoked.value.reason
    other = keys.create(BOT, [], 60, created_by="admin")
    keys.store.disable_and_revoke(BOT, "gone")
    with pytest.raises(AuthenticationError):
        keys.verify(other.key.reveal())
    assert all(k.status() == "revoked" for k in keys.keys_of(BOT))


def test_keys_belong_to_service_accounts_and_live_at_most_two_years(keys: ApiKeys) -> None:
    with pytest.raises(IdentityError, match="not a service account"):
        keys.create(f"spiffe://{TD}/user/alice", [], 60, created_by="admin")
    with pytest.raises(IdentityError, match="2 years"):
        keys.create(BOT, [], 3 * 365 * 86400, created_by="admin")
    with pytest.raises(IdentityError):
        check_app_name("a/b")


def test_last_use_is_recorded(keys: ApiKeys) -> None:
    new = keys.create(BOT, [], 3600, created_by="admin")
    keys.touch(new.key_id, "10.0.0.7", now=1000.0)
    info = keys.get(new.key_id)
    assert info is not None and info.last_used_at == 1000.0 and info.last_used_from == "10.0.0.7"

"""Identity store: principals, groups, certificate serials, revocation."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest

from raywarden.identity.store import IdentityError, IdentityStore
from raywarden.pki.spiffe import SpiffeId

pytestmark = pytest.mark.unit


def test_principals_and_revocation(tmp_path: Path) -> None:
    store = IdentityStore.create(tmp_path / "id.db")
    assert stat.S_IMODE((tmp_path / "id.db").stat().st_mode) == 0o600
    alice = SpiffeId("td", "user", "alice")
    principal = store.add_principal(alice, ["developers", "admins", "admins"], created_by="test")
    assert principal.groups == ("admins", "developers") and not principal.disabled
    with pytest.raises(IdentityError, match="already exists"):
        store.add_principal(alice, [], created_by="test")
    assert store.is_revoked("abc"), "a serial never issued must not authenticate"
    store.record_certificate("abc", str(alice), dt.datetime.now(dt.timezone.utc))
    assert not store.is_revoked("abc")
    assert store.revoke_certificate("abc", "test")
    assert store.is_revoked("abc")
    assert not store.revoke_certificate("abc", "again")
    with pytest.raises(IdentityError):
        store.add_principal(SpiffeId("td", "node", "n1"), [], created_by="test")

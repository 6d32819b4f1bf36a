"""The gateway's cached credential lookups answer exactly as the store does, on the very next lookup after
any commit: by this connection, by another connection of this process, or by another process (the CLI)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from raywarden.identity.lookups import CachedLookups
from raywarden.identity.store import IdentityStore, lookup_credential, lookup_token
from raywarden.pki.spiffe import SpiffeId

pytestmark = pytest.mark.unit

ALICE = SpiffeId("td", "user", "alice")
LATER = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)


@pytest.fixture
def store(tmp_path: Path) -> IdentityStore:
    store = IdentityStore.create(tmp_path / "id.db")
    store.add_principal(ALICE, ["viewers"], created_by="test")
    store.record_certificate("a1", str(ALICE), LATER)
    store.record_token("t1", str(ALICE), LATER.timestamp(), issued_by=str(ALICE))
    return store


def in_another_process(path: Path, code: str) -> None:
    script = "from pathlib import Path\nfrom raywarden.identity.store import IdentityStore\n"
    script += f"store = IdentityStore.open(Path({str(path)!r}))\n{code}\n"
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def test_answers_match_the_store_and_repeat_from_memory(store: IdentityStore) -> None:
    lookups = CachedLookups(store)
    assert lookups.credential("certificates", "a1") == lookup_credential(store, "certificates", "a1")
    assert lookups.token("t1", "a1") == lookup_token(store, "t1", "a1")
    assert lookups.credential("certificates", "never") is None
    first = lookups.credential("certificates", "a1")
    assert lookups.credential("certificates", "a1") is first  # nothing committed: the same answer


def test_a_revocation_by_another_process_is_seen_on_the_next_lookup(store: IdentityStore) -> None:
    lookups = CachedLookups(store)
    found = lookups.credential("certificates", "a1")
    assert found is not None and not found.revoked
    in_another_process(store.path, "store.revoke_certificate('a1', 'test')")
    found = lookups.credential("certificates", "a1")
    assert found is not None and found.revoked
    token = lookups.token("t1", "a1")
    assert token is not None and token.certificate is not None and token.certificate.revoked
    in_another_process(store.path, "store.revoke_token('t1', 'test')")
    token = lookups.token("t1", "a1")
    assert token is not None and token.credential.revoked


def test_commits_by_this_connection_and_by_another_are_seen(store: IdentityStore) -> None:
    lookups = CachedLookups(store)
    lookups.credential("certificates", "a1")
    lookups.token("t1", None)
    store.set_disabled(str(ALICE), True)  # the lookups' own connection (same store, same thread)
    found = lookups.credential("certificates", "a1")
    assert found is not None and found.principal is not None and found.principal.disabled
    other = IdentityStore.open(store.path)  # another connection in this process
    other.change_groups(str(ALICE), ["admins"], [])
    token = lookups.token("t1", None)
    assert token is not None and token.credential.principal is not None
    assert token.credential.principal.groups == ("admins", "viewers")
    assert token.credential.principal.disabled


def test_a_credential_issued_after_a_miss_is_found(store: IdentityStore) -> None:
    lookups = CachedLookups(store)
    assert lookups.credential("certificates", "a2") is None
    in_another_process(
        store.path,
        f"import datetime as dt\nstore.record_certificate('a2', {str(ALICE)!r}, dt.datetime.now(dt.timezone.utc))",
    )
    found = lookups.credential("certificates", "a2")
    assert found is not None and found.spiffe_id == str(ALICE)


def test_entries_are_bounded(store: IdentityStore) -> None:
    lookups = CachedLookups(store, max_entries=2)
    for serial in ("x1", "x2", "x3", "a1"):
        lookups.credential("certificates", serial)
    assert len(lookups._credentials) == 2

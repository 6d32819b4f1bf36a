"""Sessions and sign-in links on a real SQLite identity store: single use, timeouts, revocation, hashing."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest

from raywarden.identity.sessions import SessionRefused, SessionStore, csrf_matches, csrf_token
from raywarden.identity.store import IdentityStore
from raywarden.pki.spiffe import SpiffeId

pytestmark = pytest.mark.unit
ALICE = "spiffe://td.test/user/alice"
SERIAL = "ab12"


@pytest.fixture
def stores(tmp_path: Path) -> tuple[IdentityStore, SessionStore]:
    store = IdentityStore.create(tmp_path / "identity.db")
    store.add_principal(SpiffeId.parse(ALICE), ["developers"], created_by="test")
    store.record_certificate(SERIAL, ALICE, dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    return store, SessionStore(tmp_path / "identity.db", store)


def _session(sessions: SessionStore, now: float = 1000.0, idle: float = 60.0, max_s: float = 600.0) -> str:
    return sessions.create(
        ALICE, "certificate", SERIAL, source="127.0.0.1", idle_s=idle, max_s=max_s, now=now
    ).session_id.reveal()


def test_a_signin_link_works_once_and_expires(stores: tuple[IdentityStore, SessionStore]) -> None:
    _, sessions = stores
    code_id, code, expires = sessions.create_link(ALICE, "certificate", SERIAL, 300, now=1000.0)
    assert expires == 1300.0
    assert sessions.redeem_link(code.reveal(), now=1001.0) == (code_id, ALICE, "certificate", SERIAL)
    with pytest.raises(SessionRefused, match="already used"):
        sessions.redeem_link(code.reveal(), now=1002.0)
    _, late, _ = sessions.create_link(ALICE, "certificate", SERIAL, 300, now=1000.0)
    with pytest.raises(SessionRefused, match="expired"):
        sessions.redeem_link(late.reveal(), now=1300.0)
    _, other, _ = sessions.create_link(ALICE, "certificate", SERIAL, 300, now=1000.0)
    forged = other.reveal().split(".")[0] + ".wrong-secret"
    for bad, reason in ((forged, "wrong secret"), ("nope.x", "unknown"), ("no-dot", "malformed")):
        with pytest.raises(SessionRefused, match=reason):
            sessions.redeem_link(bad, now=1001.0)
    assert sessions.redeem_link(other.reveal(), now=1001.0)[1] == ALICE  # a wrong guess does not burn it


def test_only_hashes_are_stored(stores: tuple[IdentityStore, SessionStore], tmp_path: Path) -> None:
    _, sessions = stores
    _, code, _ = sessions.create_link(ALICE, "certificate", SERIAL, 300)
    session_id = _session(sessions)
    dump = "\n".join(sqlite3.connect(tmp_path / "identity.db").iterdump())
    assert code.reveal().split(".")[1] not in dump
    assert session_id not in dump


def test_idle_and_absolute_timeouts_end_the_session(stores: tuple[IdentityStore, SessionStore]) -> None:
    _, sessions = stores
    sid = _session(sessions, now=1000.0, idle=60.0, max_s=600.0)
    for moment in (1050.0, 1100.0, 1150.0, 1200.0, 1250.0, 1300.0, 1350.0, 1400.0):
        assert sessions.resolve(sid, now=moment).spiffe_id == ALICE  # activity keeps it alive...
    with pytest.raises(SessionRefused, match="absolute lifetime"):
        sessions.resolve(sid, now=1600.0)  # ...but never past its absolute lifetime
    idle = _session(sessions, now=1000.0, idle=60.0)
    with pytest.raises(SessionRefused, match="idle"):
        sessions.resolve(idle, now=1061.0)
    with pytest.raises(SessionRefused, match="ended"):
        sessions.resolve(idle, now=1062.0)  # and it stays ended


def test_sign_out_disable_and_revocation_end_sessions_at_once(stores: tuple[IdentityStore, SessionStore]) -> None:
    store, sessions = stores
    sid = _session(sessions, now=1000.0)
    assert sessions.end(sid, "signed out", now=1001.0) is not None
    with pytest.raises(SessionRefused, match="signed out"):
        sessions.resolve(sid, now=1002.0)
    revoked = _session(sessions, now=1000.0)
    store.revoke_certificate(SERIAL, "test")
    with pytest.raises(SessionRefused, match="revoked"):
        sessions.resolve(revoked, now=1001.0)
    store.record_certificate("cd34", ALICE, dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    live = sessions.create(ALICE, "certificate", "cd34", source="x", idle_s=60, max_s=600, now=1000.0)
    assert live.info.groups == ("developers",)
    store.set_disabled(ALICE, True)
    with pytest.raises(SessionRefused, match="disabled"):
        sessions.resolve(live.session_id.reveal(), now=1001.0)


def test_group_changes_apply_to_live_sessions(stores: tuple[IdentityStore, SessionStore]) -> None:
    store, sessions = stores
    sid = _session(sessions, now=1000.0)
    store.change_groups(ALICE, ["admins"], ["developers"])
    assert sessions.resolve(sid, now=1001.0).groups == ("admins",)


def test_csrf_token_is_bound_to_the_session() -> None:
    assert csrf_matches("session-a", csrf_token("session-a"))
    assert not csrf_matches("session-b", csrf_token("session-a"))
    assert not csrf_matches("session-a", "")

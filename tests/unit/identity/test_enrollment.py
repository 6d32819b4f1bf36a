"""Enrollment codes: hashed at rest, single use, expiring, limited per code and per source."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Callable

import pytest

from raywarden.errors import UsageError
from raywarden.identity.admin import IdentityAdmin
from raywarden.identity.enrollment import (
    MAX_CODE_FAILURES,
    MAX_SOURCE_FAILURES,
    EnrollmentRefused,
    consume,
    parse_code,
    verify_code,
)
from raywarden.secret import Secret
from raywarden.state import StateDir

pytestmark = pytest.mark.unit


def _refused(call: Callable[[], object], pattern: str) -> EnrollmentRefused:
    """The refusal's audit reason (the message the caller sees is always generic)."""
    with pytest.raises(EnrollmentRefused) as refused:
        call()
    assert refused.value.message == "enrollment refused"
    assert re.search(pattern, refused.value.reason), refused.value.reason
    return refused.value


def test_code_is_high_entropy_and_stored_only_as_a_hash(state: StateDir) -> None:
    new = IdentityAdmin(state, actor="test").add("user", "alice", ["developers"])
    secret = new.code.secret.reveal()
    assert len(secret) >= 32 and "Secret('**" in repr(new.code.secret)
    raw = state.identity_db.read_bytes()
    for wal in state.root.glob("identity.db-wal"):
        raw += wal.read_bytes()
    assert secret.encode() not in raw
    with sqlite3.connect(state.identity_db) as db:
        (stored,) = db.execute("SELECT code_hash FROM enrollments").fetchone()
    assert len(stored) == 64 and stored != secret


def test_valid_code_once_then_replay_refused(state: StateDir) -> None:
    admin = IdentityAdmin(state, actor="test")
    code = admin.add("user", "alice", []).code
    assert verify_code(admin.store, code, "10.0.0.1").name == "alice"
    consume(admin.store, code)
    _refused(lambda: verify_code(admin.store, code, "10.0.0.1"), "already used")


def test_concurrent_redemptions_only_one_wins(state: StateDir) -> None:
    admin = IdentityAdmin(state, actor="test")
    code = admin.add("user", "alice", []).code
    wins: list[bool] = []

    def redeem() -> None:
        try:
            consume(admin.store, code)
            wins.append(True)
        except EnrollmentRefused:
            wins.append(False)

    threads = [threading.Thread(target=redeem) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1


def test_expired_code_refused(state: StateDir) -> None:
    admin = IdentityAdmin(state, actor="test")
    code = admin.add("user", "alice", [], code_ttl_s=0.05).code
    time.sleep(0.1)
    _refused(lambda: verify_code(admin.store, code, "10.0.0.1"), "expired")


def test_code_of_disabled_user_refused(state: StateDir) -> None:
    admin = IdentityAdmin(state, actor="test")
    code = admin.add("user", "alice", []).code
    counts = admin.disable("user", "alice")
    assert counts["enrollment_codes"] == 1
    _refused(lambda: verify_code(admin.store, code, "10.0.0.1"), "revoked|disabled")


def test_wrong_secret_locks_the_code(state: StateDir) -> None:
    admin = IdentityAdmin(state, actor="test")
    code = admin.add("user", "alice", []).code
    wrong = parse_code(f"user:alice:{code.code_id}:{'x' * 32}")
    for i in range(MAX_CODE_FAILURES):
        source = f"10.0.1.{i}"
        _refused(lambda: verify_code(admin.store, wrong, source), "wrong secret")  # noqa: B023
    _refused(lambda: verify_code(admin.store, code, "10.0.2.1"), "locked")


def test_failures_limited_per_source(state: StateDir) -> None:
    admin = IdentityAdmin(state, actor="test")
    code = admin.add("user", "alice", []).code
    unknown = parse_code("user:alice:0000000000000000:nope")
    for _ in range(MAX_SOURCE_FAILURES):
        _refused(lambda: verify_code(admin.store, unknown, "10.9.9.9"), "unknown enrollment code")
    # Even a valid code is refused from that source, for a while.
    refused = _refused(lambda: verify_code(admin.store, code, "10.9.9.9"), "too many")
    assert refused.status == 429
    assert verify_code(admin.store, code, "10.9.9.8").name == "alice"  # other sources are unaffected


def test_malformed_codes(state: StateDir) -> None:
    for text in ("", "abc", "user:alice:id", "node:n1:id:secret", "user:Alice:id:secret"):
        with pytest.raises((UsageError, Exception)):
            parse_code(text)
    assert parse_code(" user:alice:ab:cd ").secret.matches("cd")
    assert isinstance(parse_code("sa:ci-bot:ab:cd").secret, Secret)

"""SQLite-backed identity store. One short transaction per call; safe across processes (WAL + busy timeout)."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from raywarden.errors import ConfigError, RaywardenError
from raywarden.pki.spiffe import SpiffeId

SCHEMA = """
CREATE TABLE IF NOT EXISTS principals (
    spiffe_id   TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('user', 'sa')),
    name        TEXT NOT NULL,
    disabled    INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL,
    created_by  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS memberships (
    spiffe_id   TEXT NOT NULL REFERENCES principals(spiffe_id) ON DELETE CASCADE,
    group_name  TEXT NOT NULL,
    PRIMARY KEY (spiffe_id, group_name)
);
CREATE TABLE IF NOT EXISTS certificates (
    serial      TEXT PRIMARY KEY,
    spiffe_id   TEXT NOT NULL,
    not_after   TEXT NOT NULL,
    issued_at   TEXT NOT NULL,
    revoked_at  TEXT,
    reason      TEXT
);
CREATE INDEX IF NOT EXISTS certificates_by_principal ON certificates(spiffe_id);
"""


class IdentityError(RaywardenError):
    """An identity operation was refused (unknown, duplicate or disabled principal)."""


@dataclass(frozen=True)
class Principal:
    spiffe_id: str
    kind: str
    name: str
    groups: tuple[str, ...]
    disabled: bool


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


class IdentityStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, path: Path) -> IdentityStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        store = cls(path)
        with store._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
        return store

    @classmethod
    def open(cls, path: Path) -> IdentityStore:
        if not path.is_file():
            raise ConfigError(f"identity store {path} is missing", hint="run `raywarden init`")
        return cls(path)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # A fresh connection per operation keeps the store usable from any thread and process;
        # the cost (~50 us) is small next to a TLS request.
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        try:
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=10000")
            yield db
        finally:
            db.close()

    def add_principal(self, spiffe_id: SpiffeId, groups: list[str], *, created_by: str) -> Principal:
        if spiffe_id.kind not in ("user", "sa"):
            raise IdentityError(f"{spiffe_id} is not a user or service account")
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT INTO principals (spiffe_id, kind, name, created_at, created_by) VALUES (?,?,?,?,?)",
                    (str(spiffe_id), spiffe_id.kind, spiffe_id.name, _now(), created_by),
                )
            except sqlite3.IntegrityError:
                db.execute("ROLLBACK")
                raise IdentityError(f"{spiffe_id.name} already exists", hint="pick another name") from None
            db.executemany(
                "INSERT INTO memberships (spiffe_id, group_name) VALUES (?, ?)",
                [(str(spiffe_id), g) for g in sorted(set(groups))],
            )
            db.execute("COMMIT")
        found = self.get(str(spiffe_id))
        assert found is not None  # noqa: S101 - inserted in the transaction above
        return found

    def get(self, spiffe_id: str) -> Principal | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT spiffe_id, kind, name, disabled FROM principals WHERE spiffe_id = ?", (spiffe_id,)
            ).fetchone()
            if row is None:
                return None
            groups = tuple(
                g for (g,) in db.execute(
                    "SELECT group_name FROM memberships WHERE spiffe_id = ? ORDER BY group_name", (spiffe_id,)
                )
            )
        return Principal(row[0], row[1], row[2], groups, bool(row[3]))

    def set_disabled(self, spiffe_id: str, disabled: bool) -> None:
        with self._connect() as db:
            cur = db.execute("UPDATE principals SET disabled = ? WHERE spiffe_id = ?", (int(disabled), spiffe_id))
        if cur.rowcount != 1:
            raise IdentityError(f"no such principal {spiffe_id}")

    def record_certificate(self, serial: str, spiffe_id: str, not_after: dt.datetime) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO certificates (serial, spiffe_id, not_after, issued_at) VALUES (?,?,?,?)",
                (serial, spiffe_id, not_after.isoformat(), _now()),
            )

    def is_revoked(self, serial: str) -> bool:
        with self._connect() as db:
            row = db.execute("SELECT revoked_at FROM certificates WHERE serial = ?", (serial,)).fetchone()
        # A serial we never issued is treated as revoked: the access CA key signs nothing else.
        return row is None or row[0] is not None

    def revoke_certificate(self, serial: str, reason: str) -> bool:
        with self._connect() as db:
            cur = db.execute(
                "UPDATE certificates SET revoked_at = ?, reason = ? WHERE serial = ? AND revoked_at IS NULL",
                (_now(), reason, serial),
            )
        return cur.rowcount == 1

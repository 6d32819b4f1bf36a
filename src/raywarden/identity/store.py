"""SQLite-backed identity store. One short transaction per call; safe across processes (WAL + busy timeout)."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from raywarden.errors import ConfigError, RaywardenError
from raywarden.identity.db import Database
from raywarden.pki.spiffe import SpiffeId


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
        self._db = Database(path)

    @classmethod
    def create(cls, path: Path) -> IdentityStore:
        """A new store at the current schema version (an existing one is opened, and upgraded if behind)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        store = cls(path)
        store._db.check()
        return store

    @classmethod
    def open(cls, path: Path) -> IdentityStore:
        """The store at ``path``, upgraded first if its schema is behind (schema.py); a newer one is refused."""
        if not path.is_file():
            raise ConfigError(f"identity store {path} is missing", hint="run `raywarden init`")
        store = cls(path)
        store._db.check()
        return store

    def _connect(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._db.connect()

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
                g
                for (g,) in db.execute(
                    "SELECT group_name FROM memberships WHERE spiffe_id = ? ORDER BY group_name", (spiffe_id,)
                )
            )
        return Principal(row[0], row[1], row[2], groups, bool(row[3]))

    def set_disabled(self, spiffe_id: str, disabled: bool) -> None:
        with self._connect() as db:
            cur = db.execute("UPDATE principals SET disabled = ? WHERE spiffe_id = ?", (int(disabled), spiffe_id))
        if cur.rowcount != 1:
            raise IdentityError(f"no such principal {spiffe_id}")

    def record_certificate(
        self, serial: str, spiffe_id: str, not_after: dt.datetime, *, issuer: str | None = None
    ) -> None:
        """Remember an issued serial; ``issuer`` is the issuing CA's SHA-256 (a CA rotation looks for the old
        CA's certificates still in use)."""
        with self._connect() as db:
            db.execute(
                "INSERT INTO certificates (serial, spiffe_id, not_after, issued_at, issuer_sha256) VALUES (?,?,?,?,?)",
                (serial, spiffe_id, not_after.isoformat(), _now(), issuer),
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

    # -- identities issue: listing, groups, disable, tokens, enrollment codes, attempt counters ------------

    def list_principals(self, kind: str | None = None) -> list[Principal]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT spiffe_id FROM principals WHERE (? IS NULL OR kind = ?) ORDER BY kind, name", (kind, kind)
            ).fetchall()
        found = [self.get(spiffe_id) for (spiffe_id,) in rows]
        return [p for p in found if p is not None]

    def change_groups(self, spiffe_id: str, add: list[str], remove: list[str]) -> Principal:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            if db.execute("SELECT 1 FROM principals WHERE spiffe_id = ?", (spiffe_id,)).fetchone() is None:
                db.execute("ROLLBACK")
                raise IdentityError(f"no such principal {spiffe_id}")
            db.executemany(
                "DELETE FROM memberships WHERE spiffe_id = ? AND group_name = ?", [(spiffe_id, g) for g in remove]
            )
            db.executemany(
                "INSERT OR IGNORE INTO memberships (spiffe_id, group_name) VALUES (?, ?)", [(spiffe_id, g) for g in add]
            )
            db.execute("COMMIT")
        found = self.get(spiffe_id)
        assert found is not None  # noqa: S101 - checked in the transaction above
        return found

    def disable_and_revoke(self, spiffe_id: str, reason: str) -> dict[str, int]:
        """Disable a principal and revoke everything it holds, in one transaction: certificates, token ids,
        pending enrollment codes and API keys. Returns how many of each were revoked."""
        now = _now()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            cur = db.execute("UPDATE principals SET disabled = 1 WHERE spiffe_id = ?", (spiffe_id,))
            if cur.rowcount != 1:
                db.execute("ROLLBACK")
                raise IdentityError(f"no such principal {spiffe_id}")
            certs, tokens = revoke_held(db, spiffe_id, now, reason)
            codes = db.execute(
                "UPDATE enrollments SET revoked_at = ? WHERE spiffe_id = ? AND used_at IS NULL AND revoked_at IS NULL",
                (now, spiffe_id),
            ).rowcount
            keys = db.execute(
                "UPDATE api_keys SET revoked_at = ?, reason = ? WHERE spiffe_id = ? AND revoked_at IS NULL",
                (dt.datetime.now(dt.timezone.utc).timestamp(), reason, spiffe_id),
            ).rowcount
            db.execute("COMMIT")
        return {"certificates": certs, "tokens": tokens, "enrollment_codes": codes, "api_keys": keys}

    def certificate_owner(self, serial: str) -> tuple[str, bool] | None:
        """(SPIFFE ID, revoked) of an issued serial, or None if the store never recorded it."""
        with self._connect() as db:
            row = db.execute("SELECT spiffe_id, revoked_at FROM certificates WHERE serial = ?", (serial,)).fetchone()
        return None if row is None else (row[0], row[1] is not None)

    def certificates_of(self, spiffe_id: str) -> list[dict[str, str | None]]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT serial, not_after, issued_at, revoked_at FROM certificates WHERE spiffe_id = ? "
                "ORDER BY issued_at",
                (spiffe_id,),
            ).fetchall()
        return [{"serial": r[0], "not_after": r[1], "issued_at": r[2], "revoked_at": r[3]} for r in rows]

    def record_token(self, jti: str, spiffe_id: str, expires_at: float, *, issued_by: str) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO tokens (jti, spiffe_id, issued_at, expires_at, issued_by) VALUES (?,?,?,?,?)",
                (jti, spiffe_id, _now(), expires_at, issued_by),
            )

    def token_owner(self, jti: str) -> tuple[str, bool] | None:
        """(SPIFFE ID, revoked) of an issued token id, or None if the store never recorded it."""
        with self._connect() as db:
            row = db.execute("SELECT spiffe_id, revoked_at FROM tokens WHERE jti = ?", (jti,)).fetchone()
        return None if row is None else (row[0], row[1] is not None)

    def revoke_token(self, jti: str, reason: str) -> bool:
        with self._connect() as db:
            cur = db.execute(
                "UPDATE tokens SET revoked_at = ?, reason = ? WHERE jti = ? AND revoked_at IS NULL",
                (_now(), reason, jti),
            )
        return cur.rowcount == 1

    def tokens_of(self, spiffe_id: str) -> list[dict[str, str | float | None]]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT jti, issued_at, expires_at, revoked_at FROM tokens WHERE spiffe_id = ? ORDER BY issued_at",
                (spiffe_id,),
            ).fetchall()
        return [{"jti": r[0], "issued_at": r[1], "expires_at": r[2], "revoked_at": r[3]} for r in rows]

    def add_enrollment(
        self, code_id: str, code_hash: str, spiffe_id: str, expires_at: float, *, created_by: str
    ) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO enrollments (code_id, code_hash, spiffe_id, created_at, created_by, expires_at) "
                "VALUES (?,?,?,?,?,?)",
                (code_id, code_hash, spiffe_id, _now(), created_by, expires_at),
            )

    def enrollment(self, code_id: str) -> Enrollment | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT code_id, code_hash, spiffe_id, expires_at, used_at, revoked_at, failures "
                "FROM enrollments WHERE code_id = ?",
                (code_id,),
            ).fetchone()
        if row is None:
            return None
        return Enrollment(row[0], row[1], row[2], row[3], row[4] is not None, row[5] is not None, row[6])

    def enrollments_of(self, spiffe_id: str) -> list[dict[str, str | float | int | None]]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT code_id, created_at, expires_at, used_at, revoked_at, failures "
                "FROM enrollments WHERE spiffe_id = ? ORDER BY created_at",
                (spiffe_id,),
            ).fetchall()
        keys = ("code_id", "created_at", "expires_at", "used_at", "revoked_at", "failures")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def enrollment_failed(self, code_id: str) -> int:
        """Count a wrong secret against a code; returns the new count."""
        with self._connect() as db:
            db.execute("UPDATE enrollments SET failures = failures + 1 WHERE code_id = ?", (code_id,))
            row = db.execute("SELECT failures FROM enrollments WHERE code_id = ?", (code_id,)).fetchone()
        return int(row[0]) if row else 0

    def consume_enrollment(self, code_id: str) -> bool:
        """Mark a code used. Exactly one of any number of concurrent callers gets True (single use)."""
        with self._connect() as db:
            cur = db.execute(
                "UPDATE enrollments SET used_at = ? WHERE code_id = ? AND used_at IS NULL AND revoked_at IS NULL",
                (_now(), code_id),
            )
        return cur.rowcount == 1

    def record_failure(self, scope: str, now: float) -> None:
        with self._connect() as db:
            db.execute("INSERT INTO failed_attempts (scope, at) VALUES (?, ?)", (scope, now))

    def failures_since(self, scope: str, since: float) -> int:
        with self._connect() as db:
            # Old rows are pruned here, so the table stays as small as the window.
            db.execute("DELETE FROM failed_attempts WHERE at < ?", (since - 3600,))
            row = db.execute(
                "SELECT COUNT(*) FROM failed_attempts WHERE scope = ? AND at >= ?", (scope, since)
            ).fetchone()
        return int(row[0])


@dataclass(frozen=True)
class Enrollment:
    code_id: str
    code_hash: str
    spiffe_id: str
    expires_at: float
    used: bool
    revoked: bool
    failures: int


@dataclass(frozen=True)
class CredentialState:
    """One credential and its holder, read in one connection (the gateway does this on every request)."""

    spiffe_id: str
    revoked: bool
    principal: Principal | None


@dataclass(frozen=True)
class CertificateRecord:
    serial: str
    spiffe_id: str
    revoked: bool
    not_after: float


@dataclass(frozen=True)
class TokenState:
    """A bearer token's record with its holder and, when it names one, the certificate it was minted with."""

    credential: CredentialState
    # Minted by its holder over mutual TLS (identity.token), not by an administrator (`sa token`).
    self_issued: bool
    # None when the token names no certificate, or names one this cluster never issued.
    certificate: CertificateRecord | None


def revoke_held(db: sqlite3.Connection, spiffe_id: str, now: str, reason: str) -> tuple[int, int]:
    """Revoke every certificate and token ``spiffe_id`` holds, in the caller's transaction: (certificates,
    tokens) revoked."""
    certs = db.execute(
        "UPDATE certificates SET revoked_at = ?, reason = ? WHERE spiffe_id = ? AND revoked_at IS NULL",
        (now, reason, spiffe_id),
    ).rowcount
    tokens = db.execute(
        "UPDATE tokens SET revoked_at = ?, reason = ? WHERE spiffe_id = ? AND revoked_at IS NULL",
        (now, reason, spiffe_id),
    ).rowcount
    return certs, tokens


def lookup_credential(store: IdentityStore, table: str, ident: str) -> CredentialState | None:
    """``table`` is "certificates" (by serial) or "tokens" (by jti); None if this cluster never issued it."""
    with store._connect() as db:
        return _credential(db, table, ident)


def lookup_token(store: IdentityStore, jti: str, cert_serial: str | None) -> TokenState | None:
    """The token ``jti`` and the certificate ``cert_serial`` it names, in one connection; None if this
    cluster never issued the token."""
    with store._connect() as db:
        found = _credential(db, "tokens", jti)
        if found is None:
            return None
        (issued_by,) = db.execute("SELECT issued_by FROM tokens WHERE jti = ?", (jti,)).fetchone()
        row = None
        if cert_serial is not None:
            row = db.execute(
                "SELECT spiffe_id, revoked_at, not_after FROM certificates WHERE serial = ?", (cert_serial,)
            ).fetchone()
    cert = None
    if row is not None:
        ends = dt.datetime.fromisoformat(row[2])
        not_after = (ends if ends.tzinfo else ends.replace(tzinfo=dt.timezone.utc)).timestamp()
        cert = CertificateRecord(str(cert_serial), row[0], row[1] is not None, not_after)
    return TokenState(found, issued_by == found.spiffe_id, cert)


def _credential(db: sqlite3.Connection, table: str, ident: str) -> CredentialState | None:
    column = {"certificates": "serial", "tokens": "jti"}[table]
    row = db.execute(
        f"SELECT c.spiffe_id, c.revoked_at, p.kind, p.name, p.disabled FROM {table} c "  # noqa: S608
        f"LEFT JOIN principals p ON p.spiffe_id = c.spiffe_id WHERE c.{column} = ?",
        (ident,),
    ).fetchone()
    if row is None:
        return None
    groups = tuple(
        g
        for (g,) in db.execute("SELECT group_name FROM memberships WHERE spiffe_id = ? ORDER BY group_name", (row[0],))
    )
    principal = None if row[2] is None else Principal(row[0], row[2], row[3], groups, bool(row[4]))
    return CredentialState(row[0], row[1] is not None, principal)

"""What renewal needs from the identity database: renewable service accounts, the chain of certificates that
superseded each other, reuse detection, proof-of-possession challenges, and the certificates of a CA being
retired (docs/identities.md "Renewal", docs/credentials.md "CA rotation").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import sqlite3
import time
from dataclasses import dataclass

from raywarden.identity.store import IdentityError, IdentityStore, revoke_held
from raywarden.secret import Secret

# A challenge is answered at once by a client that asked for it: a minute is plenty, and little to replay.
CHALLENGE_TTL_S = 60.0
# The grace is how long after expiry a renewable service account's certificate can still renew itself.
MAX_RENEW_GRACE = dt.timedelta(days=30)


@dataclass(frozen=True)
class IssuedCertificate:
    serial: str
    spiffe_id: str
    not_after: dt.datetime
    issued_at: str
    revoked: bool
    superseded_by: str | None
    issuer_sha256: str | None


@dataclass(frozen=True)
class RenewedCertificate:
    """A certificate signed for a renewal, not yet recorded (so not yet accepted anywhere)."""

    serial: str
    spiffe_id: str
    not_after: dt.datetime
    issuer_sha256: str | None


def _why_not_renewable(db: sqlite3.Connection, previous: str, spiffe_id: str) -> str | None:
    principal = db.execute("SELECT disabled FROM principals WHERE spiffe_id = ?", (spiffe_id,)).fetchone()
    if principal is None or principal[0]:
        return "disabled"
    row = db.execute(
        "SELECT revoked_at, superseded_by FROM certificates WHERE serial = ? AND spiffe_id = ?", (previous, spiffe_id)
    ).fetchone()
    if row is None or row[0] is not None:
        return "revoked"
    if row[1] is not None:
        return "renewed"
    return None


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class RenewalStore:
    def __init__(self, store: IdentityStore) -> None:
        self.store = store

    # -- renewable service accounts ------------------------------------------------------------------------

    def renew_grace(self, spiffe_id: str) -> dt.timedelta | None:
        """How long after expiry this principal's certificate may renew; None: not renewable after expiry."""
        with self.store._connect() as db:
            row = db.execute("SELECT renew_grace_s FROM principals WHERE spiffe_id = ?", (spiffe_id,)).fetchone()
        if row is None or row[0] is None:
            return None
        return dt.timedelta(seconds=float(row[0]))

    def set_renew_grace(self, spiffe_id: str, grace: dt.timedelta | None) -> None:
        if grace is not None and not dt.timedelta(0) < grace <= MAX_RENEW_GRACE:
            raise IdentityError("the renewal grace must be between 1 second and 30 days")
        with self.store._connect() as db:
            cur = db.execute(
                "UPDATE principals SET renew_grace_s = ? WHERE spiffe_id = ? AND kind = 'sa'",
                (None if grace is None else grace.total_seconds(), spiffe_id),
            )
        if cur.rowcount != 1:
            raise IdentityError(f"no service account {spiffe_id}")

    # -- issued certificates ---------------------------------------------------------------------------------

    def certificate(self, serial: str) -> IssuedCertificate | None:
        with self.store._connect() as db:
            row = db.execute(
                "SELECT serial, spiffe_id, not_after, issued_at, revoked_at, superseded_by, issuer_sha256 "
                "FROM certificates WHERE serial = ?",
                (serial,),
            ).fetchone()
        if row is None:
            return None
        not_after = dt.datetime.fromisoformat(row[2])
        return IssuedCertificate(row[0], row[1], not_after, row[3], row[4] is not None, row[5], row[6])

    def latest_serial(self, spiffe_id: str) -> str | None:
        """The serial issued last to ``spiffe_id`` (by issue time, then rowid)."""
        with self.store._connect() as db:
            row = db.execute(
                "SELECT serial FROM certificates WHERE spiffe_id = ? ORDER BY issued_at DESC, rowid DESC LIMIT 1",
                (spiffe_id,),
            ).fetchone()
        return None if row is None else str(row[0])

    def record_renewal(self, previous: str, renewed: RenewedCertificate) -> str | None:
        """Record ``renewed`` as the one renewal of ``previous``, in one transaction with the checks that allow
        it: the principal is enabled, ``previous`` is neither revoked nor renewed already. None when recorded;
        otherwise why not ("disabled", "revoked" or "renewed"), and nothing is recorded, so the new
        certificate is refused everywhere (a serial the store does not know is treated as revoked). Checking
        here rather than before signing closes the race with `user disable` and `revoke cert`."""
        with self.store._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            why = _why_not_renewable(db, previous, renewed.spiffe_id)
            if why is not None:
                db.execute("ROLLBACK")
                return why
            now = _now_iso()
            db.execute(
                "INSERT INTO certificates (serial, spiffe_id, not_after, issued_at, issuer_sha256) VALUES (?,?,?,?,?)",
                (renewed.serial, renewed.spiffe_id, renewed.not_after.isoformat(), now, renewed.issuer_sha256),
            )
            db.execute(
                "UPDATE certificates SET superseded_by = ?, superseded_at = ? WHERE serial = ?",
                (renewed.serial, now, previous),
            )
            db.execute("COMMIT")
        return None

    def revoke_lineage(self, serial: str, reason: str) -> list[str]:
        """Revoke ``serial`` and every certificate renewed from it, following ``superseded_by`` forward, in one
        transaction: whoever renewed a copied key holds a certificate the owner never saw, so revoking the
        copy must end it too. Returns the serials revoked now (those revoked before are passed over)."""
        now = _now_iso()
        revoked: list[str] = []
        seen: set[str] = set()
        with self.store._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            current: str | None = serial
            while current is not None and current not in seen:
                seen.add(current)
                cur = db.execute(
                    "UPDATE certificates SET revoked_at = ?, reason = ? WHERE serial = ? AND revoked_at IS NULL",
                    (now, reason, current),
                )
                if cur.rowcount == 1:
                    revoked.append(current)
                row = db.execute("SELECT superseded_by FROM certificates WHERE serial = ?", (current,)).fetchone()
                current = None if row is None else row[0]
            db.execute("COMMIT")
        return revoked

    def revoke_all_credentials(self, spiffe_id: str, reason: str) -> dict[str, int]:
        """Revoke every certificate and token the principal holds, without disabling it: after a reuse, neither
        the thief's copy nor the owner's renewed certificate can be told apart, so both go."""
        now = _now_iso()
        with self.store._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            certs, tokens = revoke_held(db, spiffe_id, now, reason)
            db.execute("COMMIT")
        return {"certificates": certs, "tokens": tokens}

    def certificates_not_from(
        self, issuer_sha256: str, issued_before: str, since: dt.datetime
    ) -> list[IssuedCertificate]:
        """Unrevoked, never renewed certificates that expire after ``since`` and are not from ``issuer_sha256``:
        issued by another CA, or (when the issuer was not recorded) before ``issued_before``. An access CA
        rotation waits for these to go."""
        with self.store._connect() as db:
            rows = db.execute(
                "SELECT serial FROM certificates WHERE revoked_at IS NULL AND superseded_by IS NULL AND "
                "((issuer_sha256 IS NOT NULL AND issuer_sha256 != ?) OR (issuer_sha256 IS NULL AND issued_at < ?))",
                (issuer_sha256, issued_before),
            ).fetchall()
        found = [self.certificate(serial) for (serial,) in rows]
        return sorted((c for c in found if c is not None and c.not_after > since), key=lambda c: c.not_after)

    # -- proof-of-possession challenges ---------------------------------------------------------------------

    def new_challenge(self, cert_sha256: str, source: str) -> tuple[Secret, float]:
        """A single-use nonce for the certificate with this SHA-256; only its hash is stored."""
        nonce = secrets.token_urlsafe(32)
        now = time.time()
        with self.store._connect() as db:
            db.execute("DELETE FROM renewal_challenges WHERE expires_at < ?", (now - 3600,))
            db.execute(
                "INSERT INTO renewal_challenges (nonce_hash, cert_sha256, source, created_at, expires_at) "
                "VALUES (?,?,?,?,?)",
                (_hash(nonce), cert_sha256, source, now, now + CHALLENGE_TTL_S),
            )
        return Secret(nonce), now + CHALLENGE_TTL_S

    def consume_challenge(self, nonce: str, cert_sha256: str) -> bool:
        """True once for a nonce that was issued for this certificate and has not expired or been used."""
        now = time.time()
        with self.store._connect() as db:
            cur = db.execute(
                "UPDATE renewal_challenges SET used_at = ? "
                "WHERE nonce_hash = ? AND cert_sha256 = ? AND used_at IS NULL AND expires_at >= ?",
                (now, _hash(nonce), cert_sha256, now),
            )
        return cur.rowcount == 1

"""Browser sessions and one-time sign-in links, kept server-side in the identity database.

Neither a session id nor a sign-in secret is stored: only SHA-256 of each (they carry 192+ random bits, so a
slow hash adds nothing). A session remembers the credential that created it (a certificate serial or an
OIDC sign-in), and is checked on every request: ended, idle too long, past its absolute lifetime, its
principal disabled or its certificate revoked all end it at once.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raywarden.errors import RaywardenError
from raywarden.identity.db import Database
from raywarden.identity.names import principal_name
from raywarden.identity.store import IdentityStore, Principal, lookup_credential
from raywarden.secret import Secret

# last_seen is written at most this often: the dashboard polls every 4 s, the idle timeout is in minutes.
TOUCH_EVERY_S = 15.0


class SessionRefused(RaywardenError):
    """A session or sign-in link is not (or no longer) valid. ``reason`` is for the audit log only."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SessionInfo:
    """A live session: who it speaks for and how it started."""

    ref: str  # a prefix of the id's hash: names the session in audit records and pages, reveals nothing
    spiffe_id: str
    kind: str
    name: str
    groups: tuple[str, ...]
    via_method: str
    via_id: str
    created_at: float
    expires_at: float


@dataclass(frozen=True)
class NewSession:
    session_id: Secret
    info: SessionInfo


@dataclass(frozen=True)
class OidcFlow:
    """One authorization-code flow: ``binding`` goes in a cookie of the browser that began it."""

    state: str
    binding: str
    nonce: str
    verifier: str
    issuer: str
    redirect_uri: str


def _digest(purpose: str, value: str) -> str:
    return hashlib.sha256(f"raywarden-{purpose}-v1\0{value}".encode()).hexdigest()


def session_ref(session_hash: str) -> str:
    return session_hash[:16]


def csrf_token(session_id: str) -> str:
    """The console's CSRF token: derived from the session id, so only the cookie's holder can compute it."""
    return _digest("csrf", session_id)


def csrf_matches(session_id: str, candidate: str) -> bool:
    return Secret(csrf_token(session_id)).matches(candidate)


class SessionStore:
    def __init__(self, path: Path, store: IdentityStore) -> None:
        self._db = Database(path)
        self.store = store
        self._db.check()

    # -- sign-in links ------------------------------------------------------------------------------

    def create_link(
        self, spiffe_id: str, via_method: str, via_id: str, ttl_s: float, now: float | None = None
    ) -> tuple[str, Secret, float]:
        """A one-time sign-in code ``CODE_ID.SECRET``; returns (code_id, code, expiry)."""
        moment = time.time() if now is None else now
        code_id, secret = secrets.token_hex(8), secrets.token_urlsafe(24)
        with self._db.connect() as db:
            db.execute(
                "INSERT INTO signin_links (code_id, code_hash, spiffe_id, via_method, via_id, created_at, "
                "expires_at) VALUES (?,?,?,?,?,?,?)",
                (code_id, _digest("signin", secret), spiffe_id, via_method, via_id, moment, moment + ttl_s),
            )
        return code_id, Secret(f"{code_id}.{secret}"), moment + ttl_s

    def redeem_link(self, code: str, now: float | None = None) -> tuple[str, str, str, str]:
        """Consume a sign-in code (single use, atomically). Returns (code_id, spiffe_id, via_method, via_id)."""
        moment = time.time() if now is None else now
        code_id, _, secret = code.strip().partition(".")
        if not code_id or not secret or len(code) > 200:
            raise SessionRefused("malformed sign-in code")
        with self._db.connect() as db:
            row = db.execute(
                "SELECT code_hash, spiffe_id, via_method, via_id, expires_at, used_at FROM signin_links "
                "WHERE code_id = ?",
                (code_id,),
            ).fetchone()
            if row is None:
                raise SessionRefused(f"unknown sign-in code id {code_id[:32]!r}")
            if not Secret(row[0]).matches(_digest("signin", secret)):
                raise SessionRefused(f"wrong secret for sign-in code {code_id}")
            if row[5] is not None:
                raise SessionRefused(f"sign-in code {code_id} was already used (replay)")
            if moment >= row[4]:
                raise SessionRefused(f"sign-in code {code_id} expired")
            cur = db.execute(
                "UPDATE signin_links SET used_at = ? WHERE code_id = ? AND used_at IS NULL", (moment, code_id)
            )
            if cur.rowcount != 1:
                raise SessionRefused(f"sign-in code {code_id} was already used (concurrent replay)")
            # Used and expired links are of no further use; keep the table as small as the TTL window.
            db.execute("DELETE FROM signin_links WHERE expires_at < ?", (moment - 86400,))
        return code_id, row[1], row[2], row[3]

    # -- OIDC authorization-code flows (state, nonce and PKCE verifier, bound to the browser) -------------

    def begin_oidc(self, issuer: str, redirect_uri: str, ttl_s: float = 600.0, now: float | None = None) -> OidcFlow:
        moment = time.time() if now is None else now
        flow = OidcFlow(
            secrets.token_urlsafe(32),
            secrets.token_urlsafe(32),
            secrets.token_urlsafe(24),
            secrets.token_urlsafe(48),
            issuer,
            redirect_uri,
        )
        with self._db.connect() as db:
            db.execute("DELETE FROM oidc_flows WHERE expires_at < ?", (moment,))
            db.execute(
                "INSERT INTO oidc_flows (state_hash, binding_hash, issuer, nonce, verifier, redirect_uri, "
                "expires_at) VALUES (?,?,?,?,?,?,?)",
                (
                    _digest("oidc-state", flow.state),
                    _digest("oidc-binding", flow.binding),
                    issuer,
                    flow.nonce,
                    flow.verifier,
                    redirect_uri,
                    moment + ttl_s,
                ),
            )
        return flow

    def finish_oidc(self, state: str, binding: str | None, now: float | None = None) -> OidcFlow:
        """Consume a flow by its state (single use), only in the browser that began it."""
        moment = time.time() if now is None else now
        hashed = _digest("oidc-state", state)
        with self._db.connect() as db:
            row = db.execute(
                "SELECT binding_hash, issuer, nonce, verifier, redirect_uri, expires_at, used_at "
                "FROM oidc_flows WHERE state_hash = ?",
                (hashed,),
            ).fetchone()
            if row is None:
                raise SessionRefused("unknown OIDC state")
            if not binding or not Secret(row[0]).matches(_digest("oidc-binding", binding)):
                raise SessionRefused("OIDC callback in a browser that did not start the flow (login CSRF)")
            if row[6] is not None:
                raise SessionRefused("OIDC state already used (replay)")
            if moment >= row[5]:
                raise SessionRefused("OIDC flow expired")
            cur = db.execute(
                "UPDATE oidc_flows SET used_at = ? WHERE state_hash = ? AND used_at IS NULL", (moment, hashed)
            )
            if cur.rowcount != 1:
                raise SessionRefused("OIDC state already used (concurrent replay)")
        return OidcFlow(state, binding, row[2], row[3], row[1], row[4])

    # -- sessions -----------------------------------------------------------------------------------

    def create(
        self,
        spiffe_id: str,
        via_method: str,
        via_id: str,
        *,
        source: str,
        idle_s: float,
        max_s: float,
        extra_groups: tuple[str, ...] = (),
        now: float | None = None,
    ) -> NewSession:
        moment = time.time() if now is None else now
        session_id = secrets.token_urlsafe(32)
        hashed = _digest("session", session_id)
        with self._db.connect() as db:
            db.execute(
                "INSERT INTO sessions (session_hash, spiffe_id, via_method, via_id, extra_groups, source, "
                "created_at, last_seen, expires_at, idle_s) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    hashed,
                    spiffe_id,
                    via_method,
                    via_id,
                    json.dumps(sorted(extra_groups)),
                    source,
                    moment,
                    moment,
                    moment + max_s,
                    idle_s,
                ),
            )
        return NewSession(Secret(session_id), self.resolve(session_id, now=moment))

    def resolve(self, session_id: str, now: float | None = None) -> SessionInfo:
        """The live session for a cookie value, or SessionRefused (and the session is ended if it just died)."""
        moment = time.time() if now is None else now
        if not session_id or len(session_id) > 200:
            raise SessionRefused("malformed session cookie")
        hashed = _digest("session", session_id)
        with self._db.connect() as db:
            row = db.execute(
                "SELECT spiffe_id, via_method, via_id, extra_groups, created_at, last_seen, expires_at, "
                "idle_s, ended_at, end_reason FROM sessions WHERE session_hash = ?",
                (hashed,),
            ).fetchone()
        if row is None:
            raise SessionRefused("unknown session")
        spiffe_id, via_method, via_id, extra, created, last_seen, expires, idle_s, ended, why = row
        ref = session_ref(hashed)
        if ended is not None:
            raise SessionRefused(f"session {ref} ended ({why})")
        if moment >= expires:
            self._end(hashed, "absolute lifetime reached", moment)
            raise SessionRefused(f"session {ref} reached its absolute lifetime")
        if moment - last_seen > idle_s:
            self._end(hashed, "idle timeout", moment)
            raise SessionRefused(f"session {ref} idle for {moment - last_seen:.0f}s")
        principal = self._holder(hashed, ref, spiffe_id, via_method, via_id, moment)
        if moment - last_seen > TOUCH_EVERY_S:
            with self._db.connect() as db:
                db.execute("UPDATE sessions SET last_seen = ? WHERE session_hash = ?", (moment, hashed))
        groups = set(json.loads(extra))
        kind, name = "user", principal_name(spiffe_id)
        if principal is not None:
            groups |= set(principal.groups)
            kind, name = principal.kind, principal.name
        return SessionInfo(ref, spiffe_id, kind, name, tuple(sorted(groups)), via_method, via_id, created, expires)

    def _holder(
        self, hashed: str, ref: str, spiffe_id: str, via_method: str, via_id: str, now: float
    ) -> Principal | None:
        """The session's principal, re-read now; ends the session if it or its credential is gone."""
        if via_method == "certificate":
            found = lookup_credential(self.store, "certificates", via_id)
            if found is None or found.revoked:
                self._end(hashed, f"certificate {via_id} revoked", now)
                raise SessionRefused(f"session {ref}: certificate {via_id} that created it is revoked")
            principal = found.principal
        else:
            principal = self.store.get(spiffe_id)
        if via_method == "certificate" and principal is None:
            self._end(hashed, "principal removed", now)
            raise SessionRefused(f"session {ref}: principal {spiffe_id} is unknown")
        if principal is not None and principal.disabled:
            self._end(hashed, "principal disabled", now)
            raise SessionRefused(f"session {ref}: principal {spiffe_id} is disabled")
        return principal

    def end(self, session_id: str, reason: str, now: float | None = None) -> str | None:
        """Sign out: returns the session's ref if it was live."""
        hashed = _digest("session", session_id)
        return session_ref(hashed) if self._end(hashed, reason, time.time() if now is None else now) else None

    def _end(self, hashed: str, reason: str, now: float) -> bool:
        with self._db.connect() as db:
            cur = db.execute(
                "UPDATE sessions SET ended_at = ?, end_reason = ? WHERE session_hash = ? AND ended_at IS NULL",
                (now, reason, hashed),
            )
        return cur.rowcount == 1

    def end_all(self, spiffe_id: str, reason: str, now: float | None = None) -> int:
        with self._db.connect() as db:
            cur = db.execute(
                "UPDATE sessions SET ended_at = ?, end_reason = ? WHERE spiffe_id = ? AND ended_at IS NULL",
                (time.time() if now is None else now, reason, spiffe_id),
            )
        return int(cur.rowcount)

    def details(self, ref: str, spiffe_id: str) -> dict[str, Any] | None:
        """What the console shows about a session, found by its (non-secret) ref."""
        with self._db.connect() as db:
            row = db.execute(
                "SELECT created_at, expires_at, via_method, via_id FROM sessions "
                "WHERE substr(session_hash, 1, 16) = ? AND spiffe_id = ?",
                (ref, spiffe_id),
            ).fetchone()
        if row is None:
            return None
        return {"created_at": row[0], "expires_at": row[1], "via_method": row[2], "via_id": row[3]}

    def live_count(self, spiffe_id: str, now: float | None = None) -> int:
        moment = time.time() if now is None else now
        with self._db.connect() as db:
            row = db.execute(
                "SELECT COUNT(*) FROM sessions WHERE spiffe_id = ? AND ended_at IS NULL AND expires_at > ?",
                (spiffe_id, moment),
            ).fetchone()
        return int(row[0])

"""API keys of service accounts for Ray Serve's data path: ``rwk_<key_id>_<secret>``, shown once.

Only the secret's SHA-256 is kept (the secret is 256 random bits, so a plain hash is enough; it is compared in
constant time). A key belongs to one service account, may be scoped to some Serve applications, expires, can
be revoked, and records its last use. The gateway reads this table on every request, so a revocation is in
force on the next request.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from raywarden.errors import AuthenticationError
from raywarden.identity.store import IdentityError, IdentityStore, Principal
from raywarden.secret import Secret

KEY_PREFIX = "rwk_"
_KEY = re.compile(r"rwk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
MAX_TTL_S = 2 * 365 * 86400
# How often one process writes a key's last use (a write per request would cost an fsync per request).
TOUCH_EVERY_S = 30.0


# Ray Serve's own rule for application names is loose; a key's scope names them as deploys through the
# gateway allow (gateway/serve/deployschema.py).
_APP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_app_name(name: str) -> None:
    if not _APP_NAME.fullmatch(name):
        raise IdentityError(
            f"--app {name[:80]!r} is not an application name",
            hint="letters, digits, '.', '-' and '_', as `raywarden serve list` shows them",
        )


@dataclass(frozen=True)
class NewApiKey:
    key_id: str
    key: Secret  # the whole key, to be shown once
    spiffe_id: str
    apps: tuple[str, ...]
    expires_at: float


@dataclass(frozen=True)
class ApiKeyInfo:
    key_id: str
    spiffe_id: str
    apps: tuple[str, ...]
    created_at: float
    created_by: str
    expires_at: float
    revoked_at: float | None
    reason: str | None
    last_used_at: float | None
    last_used_from: str | None

    def status(self, now: float | None = None) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at <= (time.time() if now is None else now) else "active"

    def as_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "spiffe_id": self.spiffe_id,
            "apps": list(self.apps),
            "created_at": self.created_at,
            "created_by": self.created_by,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "reason": self.reason,
            "last_used_at": self.last_used_at,
            "last_used_from": self.last_used_from,
            "status": self.status(),
        }


@dataclass(frozen=True)
class VerifiedKey:
    key_id: str
    principal: Principal
    apps: tuple[str, ...]  # empty: every app the account may call
    created_at: float


def looks_like_api_key(value: str) -> bool:
    return value.startswith(KEY_PREFIX)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


_COLUMNS = (
    "key_id, spiffe_id, apps, created_at, created_by, expires_at, revoked_at, reason, last_used_at, last_used_from"
)


def _info(row: tuple[Any, ...]) -> ApiKeyInfo:
    return ApiKeyInfo(row[0], row[1], tuple(json.loads(row[2])), *row[3:])


class ApiKeys:
    def __init__(self, store: IdentityStore) -> None:
        self.store = store
        self._touched: dict[str, float] = {}

    def create(self, spiffe_id: str, apps: list[str], ttl_s: float, *, created_by: str) -> NewApiKey:
        if not 0 < ttl_s <= MAX_TTL_S:
            raise IdentityError("an API key lives between 1 second and 2 years", hint="for example --ttl 90d")
        principal = self.store.get(spiffe_id)
        if principal is None or principal.kind != "sa":
            raise IdentityError(f"{spiffe_id} is not a service account", hint="API keys belong to service accounts")
        if principal.disabled:
            raise IdentityError(f"{spiffe_id} is disabled", hint=f"`raywarden sa enable {principal.name}`")
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        now = time.time()
        scoped = tuple(sorted(set(apps)))
        with self.store._connect() as db:
            db.execute(
                "INSERT INTO api_keys (key_id, secret_sha256, spiffe_id, apps, created_at, created_by, expires_at) "
                "VALUES (?,?,?,?,?,?,?)",
                (key_id, _digest(secret), spiffe_id, json.dumps(list(scoped)), now, created_by, now + ttl_s),
            )
        return NewApiKey(key_id, Secret(f"{KEY_PREFIX}{key_id}_{secret}"), spiffe_id, scoped, now + ttl_s)

    def keys_of(self, spiffe_id: str | None = None) -> list[ApiKeyInfo]:
        with self.store._connect() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE (? IS NULL OR spiffe_id = ?) "  # noqa: S608
                "ORDER BY created_at",
                (spiffe_id, spiffe_id),
            ).fetchall()
        return [_info(r) for r in rows]

    def get(self, key_id: str) -> ApiKeyInfo | None:
        with self.store._connect() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()  # noqa: S608
        return None if row is None else _info(row)

    def revoke(self, key_id: str, reason: str) -> bool:
        with self.store._connect() as db:
            cur = db.execute(
                "UPDATE api_keys SET revoked_at = ?, reason = ? WHERE key_id = ? AND revoked_at IS NULL",
                (time.time(), reason, key_id),
            )
        return cur.rowcount == 1

    def verify(self, presented: str, now: float | None = None) -> VerifiedKey:
        """The key's account and scope; raises AuthenticationError (its reason for the audit log only)."""
        found = _KEY.fullmatch(presented.strip())
        if found is None:
            raise AuthenticationError("malformed API key")
        key_id, secret = found.group(1), found.group(2)
        with self.store._connect() as db:
            row = db.execute(
                "SELECT k.secret_sha256, k.spiffe_id, k.apps, k.created_at, k.expires_at, k.revoked_at, "
                "p.kind, p.name, p.disabled FROM api_keys k LEFT JOIN principals p ON p.spiffe_id = k.spiffe_id "
                "WHERE k.key_id = ?",
                (key_id,),
            ).fetchone()
            groups = tuple(
                g
                for (g,) in db.execute(
                    "SELECT group_name FROM memberships WHERE spiffe_id = ? ORDER BY group_name",
                    (row[1] if row else "",),
                )
            )
        # The digest is compared even for an unknown id, so that timing does not tell ids apart.
        expected = row[0] if row is not None else _digest("")
        matches = Secret(expected).matches(_digest(secret))
        if row is None or not matches:
            raise AuthenticationError(f"API key {key_id} was never issued or its secret is wrong")
        moment = time.time() if now is None else now
        if row[5] is not None:
            raise AuthenticationError(f"API key {key_id} is revoked")
        if row[4] <= moment:
            raise AuthenticationError(f"API key {key_id} expired")
        if row[6] != "sa":
            raise AuthenticationError(f"API key {key_id} belongs to {row[1]}, which is not a service account")
        if row[8]:
            raise AuthenticationError(f"principal {row[1]} is disabled")
        principal = Principal(row[1], row[6], row[7], groups, False)
        return VerifiedKey(key_id, principal, tuple(json.loads(row[2])), float(row[3]))

    def touch(self, key_id: str, source: str, now: float | None = None) -> None:
        """Record a use; written at most every TOUCH_EVERY_S per key by this process."""
        moment = time.time() if now is None else now
        if moment - self._touched.get(key_id, 0.0) < TOUCH_EVERY_S:
            return
        self._touched[key_id] = moment
        with self.store._connect() as db:
            db.execute(
                "UPDATE api_keys SET last_used_at = ?, last_used_from = ? WHERE key_id = ?",
                (moment, source[:64], key_id),
            )

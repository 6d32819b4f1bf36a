"""Node registry: join tokens (hashed, single-use, expiring), enrolled nodes and revocations.

Lives in the identity store's SQLite file, in tables of its own. A join token is ``rwj.<id>.<secret>``:
the id finds the row, the secret is compared (as SHA-256, in constant time) with the stored hash, so the
database never holds anything that lets its reader join a node.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import sqlite3
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from raywarden.errors import ConfigError
from raywarden.identity.db import Database
from raywarden.identity.node_records import JoinToken, Lease, Node, NodeRegistryError, Renewal
from raywarden.secret import Secret

TOKEN_PREFIX = "rwj"  # noqa: S105 - a label, not a secret
# A token whose secret was guessed wrong this many times is burnt, even before it expires.
MAX_TOKEN_FAILURES = 5


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_token(token: str) -> tuple[str, str]:
    prefix, _, rest = token.partition(".")
    token_id, _, secret = rest.partition(".")
    if prefix != TOKEN_PREFIX or len(token_id) != 16 or not secret or len(token) > 128:
        raise NodeRegistryError("malformed join token", hint="copy the whole token from `raywarden node token create`")
    return token_id, secret


class NodeRegistry:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = Database(path)

    @classmethod
    def open(cls, path: Path) -> NodeRegistry:
        if not path.is_file():
            raise ConfigError(f"identity store {path} is missing", hint="run `raywarden init`")
        registry = cls(path)
        registry._db.check()
        return registry

    def _connect(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._db.connect()

    # -- join tokens --------------------------------------------------------------------------------

    def create_token(self, ttl: dt.timedelta, *, created_by: str) -> JoinToken:
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        expires = _now() + ttl
        with self._connect() as db:
            db.execute(
                "INSERT INTO node_join_tokens (token_id, secret_hash, created_at, created_by, expires_at) "
                "VALUES (?,?,?,?,?)",
                (token_id, _hash(secret), _now().isoformat(), created_by, expires.isoformat()),
            )
        return JoinToken(token_id, Secret(f"{TOKEN_PREFIX}.{token_id}.{secret}"), expires)

    def consume_token(self, token: Secret, *, used_by: str) -> str:
        """Check a token and mark it used, in one transaction. Returns its id; raises NodeRegistryError."""
        token_id, secret = split_token(token.reveal())
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT secret_hash, expires_at, used_at, failures FROM node_join_tokens WHERE token_id = ?",
                    (token_id,),
                ).fetchone()
                if row is None:
                    raise NodeRegistryError(f"unknown join token {token_id}")
                stored, expires_at, used_at, failures = row
                if not Secret(stored).matches(_hash(secret)):
                    db.execute("UPDATE node_join_tokens SET failures = failures + 1 WHERE token_id = ?", (token_id,))
                    db.execute("COMMIT")
                    raise NodeRegistryError(f"wrong secret for join token {token_id}")
                if used_at is not None:
                    raise NodeRegistryError(f"join token {token_id} was already used at {used_at} (replay)")
                if failures >= MAX_TOKEN_FAILURES:
                    raise NodeRegistryError(f"join token {token_id} is burnt after {failures} wrong secrets")
                if dt.datetime.fromisoformat(expires_at) <= _now():
                    raise NodeRegistryError(f"join token {token_id} expired at {expires_at}")
                db.execute(
                    "UPDATE node_join_tokens SET used_at = ?, used_by = ? WHERE token_id = ?",
                    (_now().isoformat(), used_by, token_id),
                )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return token_id

    # -- nodes --------------------------------------------------------------------------------------

    def check_admissible(self, name: str, address: str) -> None:
        """Refuse a revoked name or address, and a name that is already an active node."""
        with self._connect() as db:
            revoked = db.execute(
                "SELECT name, address FROM node_revocations WHERE name = ? OR address = ?", (name, address)
            ).fetchone()
            active = db.execute("SELECT address FROM nodes WHERE name = ? AND status = 'active'", (name,)).fetchone()
            taken = db.execute("SELECT name FROM nodes WHERE address = ? AND status = 'active'", (address,)).fetchone()
        if revoked is not None:
            raise NodeRegistryError(
                f"node {revoked[0]} at {revoked[1]} is revoked", public="this node is revoked", status=403
            )
        if active is not None:
            raise NodeRegistryError(
                f"node {name} is already active at {active[0]}",
                public=f"a node named {name} is already in the cluster",
                status=409,
                hint="pick another --name, or `raywarden down` on that node first",
            )
        if taken is not None:
            raise NodeRegistryError(
                f"address {address} already belongs to active node {taken[0]}",
                public="this address already belongs to a node of the cluster",
                status=409,
            )

    def add_node(
        self,
        *,
        name: str,
        spiffe_id: str,
        address: str,
        serial: str,
        not_after: dt.datetime,
        ports: dict[str, Any],
        node_secret: Secret,
        token_id: str,
        cert_issued_at: dt.datetime | None = None,
    ) -> None:
        now = _now().isoformat()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT OR REPLACE INTO node_renewals (name, cert_issued_at) VALUES (?, ?)",
                (name, (cert_issued_at or _now()).isoformat()),
            )
            db.execute(
                "INSERT OR REPLACE INTO nodes (name, spiffe_id, address, serial, not_after, ports, secret_hash, "
                "status, joined_at, token_id, changed_at) VALUES (?,?,?,?,?,?,?, 'active', ?,?,?)",
                (
                    name,
                    spiffe_id,
                    address,
                    serial,
                    not_after.isoformat(),
                    json.dumps(ports),
                    _hash(node_secret.reveal()),
                    now,
                    token_id,
                    now,
                ),
            )
            db.execute("COMMIT")

    def authenticate_node(self, name: str, node_secret: Secret) -> Node:
        """The node secret handed out at join: how a worker proves itself to the gateway (leave, peers)."""
        with self._connect() as db:
            row = db.execute("SELECT secret_hash FROM nodes WHERE name = ? AND status = 'active'", (name,)).fetchone()
        # Compare against a dummy hash when the node is unknown, so both paths do the same work.
        stored = row[0] if row else _hash(secrets.token_hex(16))
        if not Secret(stored).matches(_hash(node_secret.reveal())) or row is None:
            raise NodeRegistryError(
                f"node {name}: unknown, not active, or wrong node secret",
                public="node authentication failed",
                status=401,
            )
        node = self.get(name)
        assert node is not None  # noqa: S101 - read above
        return node

    # -- renewal ------------------------------------------------------------------------------------

    def record_certificate(self, name: str, serial: str, issued_at: dt.datetime, not_after: dt.datetime) -> None:
        """A renewed certificate for an active node: from now on the one `node list` and `cert status` show."""
        now = _now().isoformat()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "UPDATE nodes SET serial = ?, not_after = ?, changed_at = ? WHERE name = ? AND status = 'active'",
                (serial, not_after.isoformat(), now, name),
            )
            db.execute(
                "INSERT INTO node_renewals (name, cert_issued_at, renewed_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET cert_issued_at = excluded.cert_issued_at, "
                "renewed_at = excluded.renewed_at",
                (name, issued_at.isoformat(), now),
            )
            db.execute("COMMIT")

    def record_outcome(self, name: str, *, ok: bool, error: str | None = None) -> int:
        """What a node reported after its restart; returns its failures in a row."""
        now = _now().isoformat()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT OR IGNORE INTO node_renewals (name, cert_issued_at) VALUES (?, ?)", (name, now))
            if ok:
                db.execute(
                    "UPDATE node_renewals SET failures = 0, last_error = NULL, reported_at = ? WHERE name = ?",
                    (now, name),
                )
            else:
                db.execute(
                    "UPDATE node_renewals SET failures = failures + 1, last_error = ?, reported_at = ? WHERE name = ?",
                    ((error or "unknown")[:500], now, name),
                )
            (failures,) = db.execute("SELECT failures FROM node_renewals WHERE name = ?", (name,)).fetchone()
            db.execute("COMMIT")
        return int(failures)

    def acquire_lease(self, name: str, duration: dt.timedelta) -> Lease:
        """Grant ``name`` the restart lease for ``duration``, unless another node holds one that has not
        expired: then that node's lease is returned, and ``name`` holds nothing. A node asking again while it
        holds the lease gets it renewed (its agent restarted)."""
        now = _now().timestamp()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT node, granted_at, expires_at FROM node_restart_lease WHERE slot = 1").fetchone()
            if row is not None and row[0] != name and row[2] > now:
                db.execute("COMMIT")
                return Lease(row[0], row[1], row[2])
            lease = Lease(name, now, now + duration.total_seconds())
            db.execute(
                "INSERT OR REPLACE INTO node_restart_lease (slot, node, granted_at, expires_at) VALUES (1, ?, ?, ?)",
                (lease.node, lease.granted_at, lease.expires_at),
            )
            db.execute("COMMIT")
        return lease

    def release_lease(self, name: str) -> bool:
        """Give the lease back; False when ``name`` did not hold it (it had expired, or was never granted)."""
        with self._connect() as db:
            cursor = db.execute("DELETE FROM node_restart_lease WHERE slot = 1 AND node = ?", (name,))
            return cursor.rowcount == 1

    def current_lease(self) -> Lease | None:
        with self._connect() as db:
            row = db.execute("SELECT node, granted_at, expires_at FROM node_restart_lease WHERE slot = 1").fetchone()
        if row is None or row[2] <= _now().timestamp():
            return None
        return Lease(row[0], row[1], row[2])

    def mark_left(self, name: str) -> Node:
        with self._connect() as db:
            db.execute(
                "UPDATE nodes SET status = 'left', changed_at = ? WHERE name = ? AND status = 'active'",
                (_now().isoformat(), name),
            )
        node = self.get(name)
        if node is None:
            raise NodeRegistryError(f"no node named {name}", public="no such node", status=404)
        return node

    def revoke(self, name: str, *, revoked_by: str, reason: str) -> Node:
        node = self.get(name)
        if node is None:
            raise NodeRegistryError(
                f"no node named {name}",
                public="no such node",
                status=404,
                hint="`raywarden node list` shows the enrolled nodes",
            )
        now = _now().isoformat()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE nodes SET status = 'revoked', changed_at = ? WHERE name = ?", (now, name))
            db.execute(
                "INSERT INTO node_revocations (name, address, serial, revoked_at, revoked_by, reason) "
                "VALUES (?,?,?,?,?,?)",
                (name, node.address, node.serial, now, revoked_by, reason),
            )
            db.execute("COMMIT")
        revoked = self.get(name)
        assert revoked is not None  # noqa: S101 - updated above
        return revoked

    def get(self, name: str) -> Node | None:
        nodes = self._select("WHERE nodes.name = ?", (name,))
        return nodes[0] if nodes else None

    def all(self) -> list[Node]:
        return self._select("ORDER BY joined_at", ())

    def active_addresses(self) -> list[str]:
        return [n.address for n in self._select("WHERE status = 'active'", ())]

    def revoked_addresses(self) -> list[str]:
        with self._connect() as db:
            return sorted({a for (a,) in db.execute("SELECT address FROM node_revocations")})

    def _select(self, where: str, args: tuple[Any, ...]) -> list[Node]:
        with self._connect() as db:
            query = (
                "SELECT nodes.name, spiffe_id, address, serial, not_after, ports, status, joined_at, changed_at, "
                "cert_issued_at, renewed_at, failures, last_error, reported_at "
                "FROM nodes LEFT JOIN node_renewals ON node_renewals.name = nodes.name " + where
            )  # `where` is always a constant from this module
            rows = db.execute(query, args).fetchall()
        return [
            Node(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                json.loads(r[5]),
                r[6],
                r[7],
                r[8],
                Renewal(r[9], r[10], r[11] or 0, r[12], r[13]),
            )
            for r in rows
        ]

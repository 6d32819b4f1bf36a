"""The identity database's schema, as the ordered list of migrations that builds it.

``PRAGMA user_version`` records how many of them a database has had; migrate.py applies the rest when the
database is opened. To change the schema, append a migration here, with its reason; never edit a released
one (databases in the field have had it already).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    """One step of the schema, applied once, in the transaction of the upgrade that reaches it.

    ``sql`` runs statement by statement, then ``data`` (for what SQL alone cannot express, such as hashing
    an existing column). Neither may commit: no ``executescript``, no COMMIT. Foreign keys are off while
    migrating (SQLite's recipe for rebuilding a table, https://www.sqlite.org/lang_altertable.html) and
    checked before the commit.
    """

    version: int
    reason: str
    sql: str
    data: Callable[[sqlite3.Connection], None] | None = None


# The schema of the releases before versioning, each table exactly as they created it. IF NOT EXISTS
# because such a database may hold any subset of them (stores created before a table existed gained it
# when a later release opened them); later migrations run once, at their version, and need no such guard.
V1 = """
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
CREATE TABLE IF NOT EXISTS enrollments (
    code_id     TEXT PRIMARY KEY,
    code_hash   TEXT NOT NULL,
    spiffe_id   TEXT NOT NULL REFERENCES principals(spiffe_id) ON DELETE CASCADE,
    created_at  TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    expires_at  REAL NOT NULL,
    used_at     TEXT,
    revoked_at  TEXT,
    failures    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS enrollments_by_principal ON enrollments(spiffe_id);
CREATE TABLE IF NOT EXISTS tokens (
    jti         TEXT PRIMARY KEY,
    spiffe_id   TEXT NOT NULL,
    issued_at   TEXT NOT NULL,
    expires_at  REAL NOT NULL,
    issued_by   TEXT NOT NULL,
    revoked_at  TEXT,
    reason      TEXT
);
CREATE INDEX IF NOT EXISTS tokens_by_principal ON tokens(spiffe_id);
CREATE TABLE IF NOT EXISTS failed_attempts (
    scope       TEXT NOT NULL,
    at          REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS failed_attempts_by_scope ON failed_attempts(scope, at);
CREATE TABLE IF NOT EXISTS node_join_tokens (
    token_id     TEXT PRIMARY KEY,
    secret_hash  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    used_at      TEXT,
    used_by      TEXT,
    failures     INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS nodes (
    name         TEXT PRIMARY KEY,
    spiffe_id    TEXT NOT NULL,
    address      TEXT NOT NULL,
    serial       TEXT NOT NULL,
    not_after    TEXT NOT NULL,
    ports        TEXT NOT NULL,
    secret_hash  TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('active', 'left', 'revoked')),
    joined_at    TEXT NOT NULL,
    token_id     TEXT NOT NULL,
    changed_at   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS node_revocations (
    name         TEXT NOT NULL,
    address      TEXT NOT NULL,
    serial       TEXT NOT NULL,
    revoked_at   TEXT NOT NULL,
    revoked_by   TEXT NOT NULL,
    reason       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    session_hash TEXT PRIMARY KEY,
    spiffe_id    TEXT NOT NULL,
    via_method   TEXT NOT NULL,
    via_id       TEXT NOT NULL,
    extra_groups TEXT NOT NULL DEFAULT '[]',
    source       TEXT NOT NULL,
    created_at   REAL NOT NULL,
    last_seen    REAL NOT NULL,
    expires_at   REAL NOT NULL,
    idle_s       REAL NOT NULL,
    ended_at     REAL,
    end_reason   TEXT
);
CREATE INDEX IF NOT EXISTS sessions_by_principal ON sessions(spiffe_id);
CREATE TABLE IF NOT EXISTS signin_links (
    code_id    TEXT PRIMARY KEY,
    code_hash  TEXT NOT NULL,
    spiffe_id  TEXT NOT NULL,
    via_method TEXT NOT NULL,
    via_id     TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_at    REAL
);
CREATE TABLE IF NOT EXISTS oidc_flows (
    state_hash   TEXT PRIMARY KEY,
    binding_hash TEXT NOT NULL,
    issuer       TEXT NOT NULL,
    nonce        TEXT NOT NULL,
    verifier     TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    expires_at   REAL NOT NULL,
    used_at      REAL
);
"""

# Renewal and CA rotation (docs/identities.md, docs/credentials.md): which service accounts may renew an
# expired certificate and for how long after it expired; which certificate superseded which (a superseded
# certificate presented again means its key was copied); which CA issued each certificate (an access CA
# rotation finishes only when none of the old CA's certificates is still valid); single-use challenges that an
# expired certificate's key signs to prove possession.
V3 = """
ALTER TABLE principals ADD COLUMN renew_grace_s REAL;
ALTER TABLE certificates ADD COLUMN issuer_sha256 TEXT;
ALTER TABLE certificates ADD COLUMN superseded_by TEXT;
ALTER TABLE certificates ADD COLUMN superseded_at TEXT;
CREATE TABLE renewal_challenges (
    nonce_hash   TEXT PRIMARY KEY,
    cert_sha256  TEXT NOT NULL,
    source       TEXT NOT NULL,
    created_at   REAL NOT NULL,
    expires_at   REAL NOT NULL,
    used_at      REAL
);
"""

# Serve's data path (docs/serve.md). An API key is "rwk_<key_id>_<secret>": only the secret's SHA-256 is kept.
# apps: a JSON list of the application names the key may call, or "[]" for every app its account may call.
V4 = """
CREATE TABLE api_keys (
    key_id         TEXT PRIMARY KEY,
    secret_sha256  TEXT NOT NULL,
    spiffe_id      TEXT NOT NULL REFERENCES principals(spiffe_id) ON DELETE CASCADE,
    apps           TEXT NOT NULL DEFAULT '[]',
    created_at     REAL NOT NULL,
    created_by     TEXT NOT NULL,
    expires_at     REAL NOT NULL,
    revoked_at     REAL,
    reason         TEXT,
    last_used_at   REAL,
    last_used_from TEXT
);
CREATE INDEX api_keys_by_principal ON api_keys(spiffe_id);
CREATE TABLE serve_apps (
    name           TEXT PRIMARY KEY,
    owner          TEXT NOT NULL,
    invoke_groups  TEXT NOT NULL DEFAULT '[]',
    route_prefix   TEXT,
    config_sha256  TEXT NOT NULL,
    deployed_by    TEXT NOT NULL,
    deployed_at    REAL NOT NULL
);
CREATE TABLE serve_deploy_lease (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    holder  TEXT NOT NULL,
    until   REAL NOT NULL
);
"""

# Append only. A database at version N has had migrations 1..N applied, whichever release it came from.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "versioned baseline: principals, groups, certificates, enrollment codes, tokens, attempt counters, "
        "nodes, join tokens, node revocations, browser sessions, sign-in links, OIDC flows",
        V1,
    ),
    Migration(
        2,
        "node certificate renewal: when each node's certificate was issued and how its renewals went, and the "
        "one restart lease the head grants at a time",
        """
CREATE TABLE node_renewals (
    name            TEXT PRIMARY KEY,
    cert_issued_at  TEXT NOT NULL,
    renewed_at      TEXT,
    failures        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    reported_at     TEXT
);
CREATE TABLE node_restart_lease (
    slot        INTEGER PRIMARY KEY CHECK (slot = 1),
    node        TEXT NOT NULL,
    granted_at  REAL NOT NULL,
    expires_at  REAL NOT NULL
);
""",
    ),
    Migration(
        3,
        "renewable service accounts (grace after expiry), superseded certificates (reuse detection), the CA "
        "that issued each certificate (CA rotation), renewal challenges",
        V3,
    ),
    Migration(
        4,
        "Ray Serve behind the gateway: API keys of service accounts (stored hashed, scoped to apps, with their "
        "last use), the owner, invoker groups and deployer of each Serve application, and the lease that lets "
        "one gateway process deploy at a time",
        V4,
    ),
)
CURRENT_VERSION = MIGRATIONS[-1].version

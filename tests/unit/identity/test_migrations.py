"""Schema versions of identity.db: upgrading the previous release's database, refusals, rollback, concurrency."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from raywarden.errors import ConfigError
from raywarden.identity import migrate, schema
from raywarden.identity.migrate import SchemaError, backups_of, ensure_current, split_statements
from raywarden.identity.nodes import NodeRegistry
from raywarden.identity.schema import CURRENT_VERSION, MIGRATIONS, Migration
from raywarden.identity.sessions import SessionStore, session_ref
from raywarden.identity.store import IdentityStore, lookup_credential
from raywarden.state import StateDir

pytestmark = pytest.mark.unit

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "identity_db_v0.sql"
TD = "spiffe://fixture.raywarden"
ALICE, BOB, CI_BOT, LEAVER = (f"{TD}/user/alice", f"{TD}/user/bob", f"{TD}/sa/ci-bot", f"{TD}/user/leaver")


def load_fixture(path: Path) -> Path:
    """The previous release's database, on disk as that release left it: 0600, WAL, no version."""
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(FIXTURE.read_text())
    db.close()
    return path


def reference() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.executescript(FIXTURE.read_text())
    return db


def version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def rows(db: sqlite3.Connection, table: str, columns: list[str] | None = None) -> list[tuple[Any, ...]]:
    """Every row, or only ``columns`` of it (later migrations add columns to the first version's tables)."""
    selected = ", ".join(columns) if columns else "*"
    return sorted(db.execute(f"SELECT {selected} FROM {table}").fetchall(), key=repr)  # noqa: S608 - known names


def columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute("SELECT * FROM pragma_table_info(?)", (table,))]


def tables(db: sqlite3.Connection) -> list[str]:
    return [n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]


def dump(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [f"user_version {db.execute('PRAGMA user_version').fetchone()[0]}", *db.iterdump()]


def schema_of(path: Path) -> list[tuple[str, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").fetchall()


# -- the previous release's database ------------------------------------------------------------------------


def test_the_fixture_has_rows_in_every_table_of_the_first_version() -> None:
    ref = reference()
    made = sqlite3.connect(":memory:")
    for statement in split_statements(schema.V1):
        made.execute(statement)
    assert tables(ref) == tables(made)
    empty = [t for t in tables(ref) if not rows(ref, t)]
    assert not empty, f"the fixture must hold rows in every table: {empty}"


def test_the_previous_release_database_is_upgraded_and_every_row_survives(tmp_path: Path) -> None:
    path = load_fixture(tmp_path / "identity.db")
    assert version(path) == 0

    store = IdentityStore.open(path)

    assert version(path) == CURRENT_VERSION
    ref = reference()
    with sqlite3.connect(path) as db:
        for table in tables(ref):
            assert rows(db, table, columns(ref, table)) == rows(ref, table), table
    # The copy taken before the upgrade: one file, private, the database exactly as it was.
    [backup] = backups_of(path)
    assert backup.parent == tmp_path and backup.name.startswith("identity.db.v0.")
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert version(backup) == 0
    with sqlite3.connect(backup) as copy:
        assert tables(copy) == tables(ref)
        for table in tables(ref):
            assert rows(copy, table) == rows(ref, table), table
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.bak-wal"))

    # The current code reads the old rows as it reads its own.
    alice = store.get(ALICE)
    assert alice is not None and alice.groups == ("admins", "developers") and not alice.disabled
    leaver = store.get(LEAVER)
    assert leaver is not None and leaver.disabled
    assert [p.name for p in store.list_principals("sa")] == ["ci-bot"]
    revoked = ref.execute("SELECT serial FROM certificates WHERE reason = 'superseded'").fetchone()[0]
    found = lookup_credential(store, "certificates", revoked)
    assert found is not None and found.revoked and found.principal == alice
    assert [t["revoked_at"] is None for t in store.tokens_of(CI_BOT)].count(True) == 1
    assert {e["failures"] for e in store.enrollments_of(CI_BOT)} == {1}
    nodes = NodeRegistry.open(path)
    assert {n.name: n.status for n in nodes.all()} == {"worker-1": "active", "worker-2": "revoked", "worker-3": "left"}
    assert nodes.revoked_addresses() == ["10.0.0.12"] and nodes.active_addresses() == ["10.0.0.11"]
    sessions = SessionStore(path, store)
    [(live,)] = ref.execute("SELECT session_hash FROM sessions WHERE spiffe_id = ? AND ended_at IS NULL", (ALICE,))
    assert sessions.details(session_ref(live), ALICE) is not None

    # Opened again (another process, the gateway's next worker): nothing to do, no second copy.
    IdentityStore.open(path)
    assert len(backups_of(path)) == 1


def test_an_upgraded_database_and_a_new_one_have_the_same_schema(tmp_path: Path) -> None:
    upgraded = load_fixture(tmp_path / "old.db")
    IdentityStore.open(upgraded)
    fresh = tmp_path / "new.db"
    IdentityStore.create(fresh)
    assert schema_of(upgraded) == schema_of(fresh)
    assert version(upgraded) == version(fresh) == CURRENT_VERSION


def test_a_release_older_still_gains_the_tables_it_lacked(tmp_path: Path) -> None:
    """Releases before the node and session tables left stores with only some of them."""
    path = load_fixture(tmp_path / "identity.db")
    with sqlite3.connect(path) as db:
        for table in ("sessions", "signin_links", "oidc_flows", "nodes", "node_join_tokens", "node_revocations"):
            db.execute(f"DROP TABLE {table}")
    IdentityStore.open(path)
    assert schema_of(path) == schema_of(IdentityStore.create(tmp_path / "new.db").path)


def test_the_cli_upgrades_on_first_use_and_says_so(state: StateDir) -> None:
    state.identity_db.unlink()
    for leftover in state.root.glob("identity.db-*"):
        leftover.unlink()
    load_fixture(state.identity_db)
    result = _cli(state, "user", "list", "--json")
    assert result.returncode == 0, result.stderr
    assert {p["name"] for p in json.loads(result.stdout)} == {"alice", "bob", "leaver"}
    assert f"upgraded from version 0 to {CURRENT_VERSION}" in result.stderr and ".bak" in result.stderr
    assert version(state.identity_db) == CURRENT_VERSION and len(backups_of(state.identity_db)) == 1


# -- what is refused ----------------------------------------------------------------------------------------


def test_a_new_file_is_created_at_the_current_version(tmp_path: Path) -> None:
    path = tmp_path / "st ate#?mode=ro%20" / "identity.db"  # the path reaches SQLite as a URI: quoted
    IdentityStore.create(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.parent.name]
    assert version(path) == CURRENT_VERSION
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert backups_of(path) == []


def test_a_newer_database_is_refused_and_left_alone(tmp_path: Path, state: StateDir) -> None:
    path = IdentityStore.create(tmp_path / "identity.db").path
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={CURRENT_VERSION + 1}")
    before = dump(path)
    for opener in (IdentityStore.open, NodeRegistry.open):
        with pytest.raises(SchemaError, match=f"schema version {CURRENT_VERSION + 1}, newer") as info:
            opener(path)
        assert info.value.hint is not None and ".bak" in info.value.hint
    with pytest.raises(SchemaError, match="newer"):
        SessionStore(path, IdentityStore(path))
    assert dump(path) == before and backups_of(path) == []

    # As the user meets it: an error and a hint, no traceback, a non-zero exit.
    with sqlite3.connect(state.identity_db) as db:
        db.execute("PRAGMA user_version=999")
    result = _cli(state, "user", "list")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "newer than this raywarden" in result.stderr and "hint:" in result.stderr


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "identity.db"
    content = b"not a database at all\n" * 100
    path.write_bytes(content)
    with pytest.raises(SchemaError, match="cannot be read as an SQLite database"):
        IdentityStore.open(path)
    assert path.read_bytes() == content


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("CREATE TABLE jobs (id TEXT PRIMARY KEY);", "tables raywarden never made: jobs"),
        ("CREATE TABLE principals (spiffe_id TEXT PRIMARY KEY, role TEXT);", "table principals differs"),
    ],
)
def test_an_unversioned_database_that_is_not_ours_is_refused(tmp_path: Path, sql: str, message: str) -> None:
    path = tmp_path / "identity.db"
    with sqlite3.connect(path) as db:
        db.execute(sql)
    before = dump(path)
    with pytest.raises(SchemaError, match=message):
        IdentityStore.open(path)
    assert dump(path) == before and backups_of(path) == []


def test_a_missing_file_is_reported_and_never_created(tmp_path: Path) -> None:
    store = IdentityStore.create(tmp_path / "identity.db")
    for opener in (
        lambda p: IdentityStore.open(p),
        lambda p: NodeRegistry.open(p),
        lambda p: SessionStore(p, store),
    ):
        with pytest.raises(ConfigError, match="identity store"):
            opener(tmp_path / "elsewhere.db")
    assert not (tmp_path / "elsewhere.db").exists()


# -- failures roll back -------------------------------------------------------------------------------------


def _fail_in_data(db: sqlite3.Connection) -> None:
    db.execute("INSERT INTO scratch_keys VALUES ('k1')")
    raise RuntimeError("disk on fire")


API_KEYS = "CREATE TABLE scratch_keys (id TEXT PRIMARY KEY);"  # a stand-in: api_keys is a real table now
NEXT = CURRENT_VERSION + 1  # a test's migration comes after the release's own


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (Migration(NEXT, "api keys", API_KEYS + "\nINSERT INTO nowhere VALUES (1);"), "no such table: nowhere"),
        (Migration(NEXT, "api keys", API_KEYS, _fail_in_data), "disk on fire"),
        # With foreign keys off while migrating, a dangling reference is caught by the check before COMMIT.
        (Migration(NEXT, "drop bob", "DELETE FROM principals WHERE name = 'bob';"), "would break 2 references"),
    ],
    ids=["sql", "data-step", "foreign-key"],
)
@pytest.mark.parametrize("start", [0, CURRENT_VERSION])
def test_a_failed_migration_leaves_the_database_as_it_was(
    tmp_path: Path, broken: Migration, message: str, start: int
) -> None:
    path = load_fixture(tmp_path / "identity.db")
    if start:
        IdentityStore.open(path)
        for copy in backups_of(path):
            copy.unlink()
    before = dump(path)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA foreign_keys=ON")
    with pytest.raises(SchemaError, match=message) as info:
        ensure_current(db, path, (*MIGRATIONS, broken))
    assert f"version {start}" in info.value.message and "unchanged" in info.value.message
    assert not db.in_transaction
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1, "the connection is restored for normal use"
    db.close()
    assert dump(path) == before
    # The copy taken before the attempt is kept, and named in the hint.
    [backup] = backups_of(path)
    assert info.value.hint is not None and str(backup) in info.value.hint
    # The release's own migrations still work afterwards.
    IdentityStore.open(path)
    assert version(path) == CURRENT_VERSION


def test_a_migration_that_commits_on_its_own_is_caught(tmp_path: Path) -> None:
    path = IdentityStore.create(tmp_path / "identity.db").path
    db = sqlite3.connect(path, isolation_level=None)
    sneaky = Migration(NEXT, "uses executescript", "", lambda c: c.executescript("CREATE TABLE t (x);"))
    with pytest.raises(SchemaError, match="committed on its own, so the database may be partly changed"):
        ensure_current(db, path, (*MIGRATIONS, sneaky))
    assert version(path) == CURRENT_VERSION, "never marked as migrated"


def test_an_opener_that_cannot_take_the_lock_gives_up_with_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = load_fixture(tmp_path / "identity.db")
    monkeypatch.setattr(migrate, "MIGRATION_LOCK_TIMEOUT_MS", 50)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(SchemaError, match="could not be locked") as info:
            IdentityStore.open(path)
        assert info.value.hint is not None and "raywarden down" in info.value.hint
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert version(path) == 0 and backups_of(path) == []


# -- several processes at once ------------------------------------------------------------------------------

# Each child marks itself ready, then opens; the one that migrates waits in its data step until the other is
# ready too, so the other is trying to open while the migration is under way.
CHILD = textwrap.dedent(
    """
    import json, os, sqlite3, sys, time
    from pathlib import Path
    from raywarden.identity.migrate import ensure_current
    from raywarden.identity.schema import CURRENT_VERSION, MIGRATIONS, Migration

    path, me, peers = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])

    def record(db):
        deadline = time.monotonic() + 60
        while len(list(path.parent.glob("ready-*"))) < peers and time.monotonic() < deadline:
            time.sleep(0.01)
        db.execute("INSERT INTO upgrade_runs VALUES (?)", (me,))

    runs = "CREATE TABLE upgrade_runs (who TEXT NOT NULL);"
    extra = Migration(CURRENT_VERSION + 1, "test: count the runs", runs, record)
    db = sqlite3.connect(path, isolation_level=None)
    (path.parent / f"ready-{me}").touch()
    done = ensure_current(db, path, (*MIGRATIONS, extra))
    print(json.dumps(None if done is None else [done.from_version, done.to_version]))
    """
)


def test_processes_opening_at_once_migrate_exactly_once(tmp_path: Path) -> None:
    path = load_fixture(tmp_path / "identity.db")
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(i), "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for i in range(3)
    ]
    outcomes = []
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err.decode()
        outcomes.append(json.loads(out))
    assert sorted(outcomes, key=repr) == [None, None, [0, CURRENT_VERSION + 1]]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == CURRENT_VERSION + 1
        assert len(db.execute("SELECT who FROM upgrade_runs").fetchall()) == 1
        ref = reference()
        for table in tables(ref):
            assert rows(db, table, columns(ref, table)) == rows(ref, table), table
    assert len(backups_of(path)) == 1


def test_gateway_workers_opening_a_previous_release_database_at_once(tmp_path: Path) -> None:
    path = load_fixture(tmp_path / "identity.db")
    code = "import sys; from pathlib import Path; from raywarden.identity.store import IdentityStore; "
    code += "print(len(IdentityStore.open(Path(sys.argv[1])).list_principals()))"
    children = [
        subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0 and out.strip() == b"4", err.decode()
    assert version(path) == CURRENT_VERSION and len(backups_of(path)) == 1


# -- cheap on the request path ------------------------------------------------------------------------------


def test_the_version_is_read_once_per_connection_not_per_query(tmp_path: Path) -> None:
    store = IdentityStore.create(tmp_path / "identity.db")
    seen: list[str] = []
    db = store._db._connection()
    db.set_trace_callback(seen.append)
    for _ in range(5):
        store.get(ALICE)
        lookup_credential(store, "certificates", "abc")
    assert seen and not [s for s in seen if "user_version" in s]


# -- the list itself ----------------------------------------------------------------------------------------


def test_migrations_are_numbered_from_one_each_with_a_reason() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert all(m.reason.strip() for m in MIGRATIONS)
    assert CURRENT_VERSION == MIGRATIONS[-1].version
    for migration in MIGRATIONS:
        list(split_statements(migration.sql))


def test_statements_are_split_where_sqlite_says_they_end() -> None:
    script = """
    CREATE TABLE a (x TEXT DEFAULT 'semi;colon');
    CREATE TRIGGER t AFTER INSERT ON a BEGIN UPDATE a SET x = 'y;'; DELETE FROM a WHERE 0; END;
    INSERT INTO a VALUES ('1'); INSERT INTO a VALUES ('2');
    """
    assert len(list(split_statements(script))) == 4
    with pytest.raises(SchemaError, match="incomplete"):
        list(split_statements("CREATE TABLE b (x); CREATE TABLE c (y"))


def _cli(state: StateDir, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY")}
    env["RAYWARDEN_STATE_DIR"] = str(state.root)
    env["RAYWARDEN_HOME"] = str(state.root.parent / "home")
    return subprocess.run(
        [sys.executable, "-m", "raywarden.cli.main", *args], env=env, capture_output=True, text=True, timeout=120
    )

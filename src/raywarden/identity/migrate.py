"""Opening the identity database: check its schema version, and apply pending migrations (schema.py).

Every new connection reads ``PRAGMA user_version`` (one header read); only when it is behind does the slow
path run: take the write lock (BEGIN IMMEDIATE, so of several processes opening at once exactly one
migrates and the others find the new version), copy the database aside, apply every pending migration and
its version in that one transaction, check foreign keys, commit. Any failure rolls it all back.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import re
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from raywarden.errors import RaywardenError
from raywarden.files import PRIVATE_FILE_MODE, fsync_dir
from raywarden.identity.schema import MIGRATIONS, V1, Migration

log = logging.getLogger(__name__)

# How long an opener waits for another process that is migrating (the usual busy timeout is 10 s).
MIGRATION_LOCK_TIMEOUT_MS = 120_000
BUSY_TIMEOUT_MS = 10_000


class SchemaError(RaywardenError):
    """The identity database is of an unknown or newer schema, or could not be upgraded."""


@dataclass(frozen=True)
class Upgrade:
    """What opening the database did. ``backup`` is the copy taken before; None for a new database."""

    path: Path
    from_version: int
    to_version: int
    backup: Path | None

    @property
    def created(self) -> bool:
        return self.backup is None


def ensure_current(db: sqlite3.Connection, path: Path, migrations: Sequence[Migration] = MIGRATIONS) -> Upgrade | None:
    """Bring the database behind ``db`` (an autocommit connection) to the last version of ``migrations``.

    Returns what was done, or None if it was current already. Raises SchemaError for a database that is
    newer, foreign or not SQLite, or whose upgrade failed (then it is left exactly as it was).
    """
    target = migrations[-1].version
    version = _read_version(db, path)
    if version == target:
        return None
    _refuse_newer(path, version, target)
    return _upgrade(db, path, migrations, target)


def backups_of(path: Path) -> list[Path]:
    """The copies taken before upgrades (``NAME.vVERSION.TIME.bak``), oldest first."""
    found = []
    for candidate in path.parent.glob(f"{path.name}.v*.bak"):
        match = re.fullmatch(re.escape(path.name) + r"\.v(\d+)\.(.+)\.bak", candidate.name)
        if match:
            found.append((int(match[1]), match[2], candidate))
    return [candidate for _, _, candidate in sorted(found)]


def _read_version(db: sqlite3.Connection, path: Path) -> int:
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        raise SchemaError(
            f"{path} cannot be read as an SQLite database: {exc}",
            hint="check that it is raywarden's identity.db; restore it from a backup of the state dir",
        ) from None


def _refuse_newer(path: Path, version: int, target: int) -> None:
    if version > target:
        raise SchemaError(
            f"{path} has schema version {version}, newer than this raywarden understands (up to {target})",
            hint="a newer raywarden upgraded it: run that release or a later one; to go back to this one, "
            f"stop the cluster and restore the copy taken before the upgrade ({path.name}.v{target}.*.bak)",
        )


def _upgrade(db: sqlite3.Connection, path: Path, migrations: Sequence[Migration], target: int) -> Upgrade | None:
    _check_sequence(migrations)
    # Foreign keys can only be switched outside a transaction; a migration that rebuilds a table needs them
    # off (https://www.sqlite.org/lang_altertable.html#otheralter), and foreign_key_check runs before commit.
    foreign_keys = int(db.execute("PRAGMA foreign_keys").fetchone()[0])
    db.execute("PRAGMA foreign_keys=OFF")
    db.execute(f"PRAGMA busy_timeout={MIGRATION_LOCK_TIMEOUT_MS}")
    try:
        _begin(db, path)
        try:
            done = _migrate_locked(db, path, migrations, target)
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):  # the lock, the copy and the migrations raise SchemaError
                raise SchemaError(
                    f"upgrading {path} failed: {exc}; the database is unchanged",
                    hint="check free space and permissions in the state dir, then retry",
                ) from exc
            raise
    finally:
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        db.execute(f"PRAGMA foreign_keys={foreign_keys}")
    if done is None:
        return None
    if done.created:
        db.execute("PRAGMA journal_mode=WAL")  # WAL is a property of the file: set once, kept
        log.info("%s: created at schema version %d", path, done.to_version)
    else:
        log.warning(
            "%s: schema upgraded from version %d to %d; the database as it was is kept as %s",
            path,
            done.from_version,
            done.to_version,
            done.backup,
        )
    return done


def _begin(db: sqlite3.Connection, path: Path) -> None:
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        raise SchemaError(
            f"{path} needs a schema upgrade, but it could not be locked for writing: {exc}",
            hint="another raywarden process may be holding it; retry, or stop the cluster (`raywarden down`) "
            "and retry; check that this user may write the state dir",
        ) from None


def _migrate_locked(db: sqlite3.Connection, path: Path, migrations: Sequence[Migration], target: int) -> Upgrade | None:
    # Read again under the lock: another process may have migrated while we waited for it.
    version = _read_version(db, path)
    if version == target:
        return None
    _refuse_newer(path, version, target)
    tables = _tables(db)
    if version == 0 and tables:
        _check_unversioned(path, tables)
    backup = _backup(path, version) if tables else None  # a new database has nothing to keep
    for migration in migrations:
        if migration.version <= version:
            continue
        try:
            _apply(db, migration)
        except Exception as exc:
            outcome = (
                f"the database is unchanged (version {version})"
                if db.in_transaction
                else "the migration committed on its own, so the database may be partly changed"
            )
            raise SchemaError(
                f"upgrading {path} to schema version {migration.version} ({migration.reason}) failed: {exc}; "
                + outcome,
                hint=f"a copy taken before the attempt is {backup}" if backup else None,
            ) from exc
    violations = db.execute("PRAGMA foreign_key_check").fetchall()
    if violations:
        raise SchemaError(
            f"upgrading {path} to schema version {target} would break {len(violations)} references "
            f"(first: a row of {violations[0][0]}); the database is unchanged (version {version})",
            hint=f"a copy taken before the attempt is {backup}" if backup else None,
        )
    return Upgrade(path, version, target, backup)


def _apply(db: sqlite3.Connection, migration: Migration) -> None:
    for statement in split_statements(migration.sql):
        db.execute(statement)
    if migration.data is not None:
        migration.data(db)
    if not db.in_transaction:
        raise SchemaError(f"migration {migration.version} committed on its own (executescript or COMMIT)")
    db.execute(f"PRAGMA user_version={int(migration.version)}")


def split_statements(script: str) -> Iterator[str]:
    """The statements of an SQL script, cut where SQLite's own tokenizer says a statement is complete
    (so a ``;`` inside a string or a trigger body does not cut it)."""
    start = 0
    for end, char in enumerate(script):
        if char == ";" and sqlite3.complete_statement(script[start : end + 1]):
            statement = script[start : end + 1].strip()
            start = end + 1
            if statement != ";":
                yield statement
    if script[start:].strip():
        raise SchemaError(f"incomplete SQL statement in a migration: {script[start:].strip()[:80]!r}")


def _check_sequence(migrations: Sequence[Migration]) -> None:
    for index, migration in enumerate(migrations, start=1):
        if migration.version != index or not migration.reason.strip():
            raise SchemaError(f"migration {migration.version}: versions must run 1, 2, 3... each with a reason")


def _tables(db: sqlite3.Connection) -> dict[str, list[tuple[object, ...]]]:
    names = [
        n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    ]
    return {name: db.execute("SELECT * FROM pragma_table_info(?)", (name,)).fetchall() for name in names}


@functools.cache
def _v1_tables() -> dict[str, list[tuple[object, ...]]]:
    memory = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for statement in split_statements(V1):
            memory.execute(statement)
        return _tables(memory)
    finally:
        memory.close()


def _check_unversioned(path: Path, tables: dict[str, list[tuple[object, ...]]]) -> None:
    """A database without a version is taken for one of the releases before versioning only if every table
    in it is one of theirs, column for column; anything else is refused, never adopted."""
    known = _v1_tables()
    foreign = sorted(set(tables) - set(known))
    if foreign:
        raise SchemaError(
            f"{path} has no schema version and holds tables raywarden never made: {', '.join(foreign)}",
            hint="check that the path is raywarden's identity.db (the state dir's identity.db)",
        )
    for name, columns in tables.items():
        if columns != known[name]:
            raise SchemaError(
                f"{path} has no schema version and its table {name} differs from every raywarden release",
                hint="restore identity.db from a backup of the state dir",
            )


def _backup(path: Path, version: int) -> Path:
    """A consistent copy of the database as it is now, 0600, next to it; kept, never removed by us.

    Read through a second connection: we hold the write lock, so it sees exactly what is about to be
    migrated. Written under a temporary name and renamed, so a copy by that name is always whole.
    """
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    final = path.with_name(f"{path.name}.v{version}.{stamp}.bak")
    try:
        _copy(path, final)
    except (OSError, sqlite3.Error) as exc:
        raise SchemaError(
            f"{path} needs a schema upgrade, but the copy kept before upgrading could not be written: {exc}; "
            "nothing was changed",
            hint=f"free space in {path.parent} and check that this user may write there",
        ) from exc
    return final


def _copy(path: Path, final: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".bak.tmp")
    os.fchmod(fd, PRIVATE_FILE_MODE)
    os.close(fd)
    try:
        source = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, isolation_level=None)
        copy = sqlite3.connect(tmp, isolation_level=None)
        try:
            source.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
        finally:
            copy.close()
            source.close()
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)

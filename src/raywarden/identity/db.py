"""The identity database file (SQLite, WAL): one connection per thread, reused.

Connections run in autocommit mode, so every statement outside an explicit transaction starts a new read
and sees what other processes committed (a revocation by `raywarden user disable` is seen by the gateway
on its next request). Reusing the connection saves the open, PRAGMA and schema-version cost on every
request: the schema version is checked (pending migrations applied, migrate.py) once per new connection.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from raywarden.errors import ConfigError
from raywarden.identity.migrate import BUSY_TIMEOUT_MS, ensure_current


class Database:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        try:
            yield db
        finally:
            # An error inside BEGIN ... COMMIT must not leave the reused connection holding an old snapshot.
            if db.in_transaction:
                db.rollback()

    def check(self) -> None:
        """Open this thread's connection now, so that whoever opens a store hears of a missing file, a newer
        schema or a failed upgrade at once rather than on its first query."""
        self._connection()

    def _connection(self) -> sqlite3.Connection:
        pid = os.getpid()
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "pid", None) != pid:  # never reuse a connection across fork
            db = self._open()
            self._local.db = db
            self._local.pid = pid
        return db

    def _open(self) -> sqlite3.Connection:
        # mode=rw: never create the file here. IdentityStore.create makes it, 0600, before the first open.
        uri = f"{self.path.absolute().as_uri()}?mode=rw"
        try:
            db = sqlite3.connect(uri, uri=True, timeout=10.0, isolation_level=None, check_same_thread=True)
        except sqlite3.OperationalError as exc:
            raise ConfigError(
                f"identity store {self.path} cannot be opened: {exc}",
                hint="run `raywarden init`, or check --state-dir and the file's owner",
            ) from None
        try:
            db.execute("PRAGMA foreign_keys=ON")
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            ensure_current(db, self.path)
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

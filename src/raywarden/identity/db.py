"""The identity database file (SQLite, WAL): one connection per thread, reused.

Connections run in autocommit mode, so every statement outside an explicit transaction starts a new read
and sees what other processes committed (a revocation by `raywarden user disable` is seen by the gateway
on its next request). Reusing the connection saves the open and PRAGMA cost on every request.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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

    def _connection(self) -> sqlite3.Connection:
        pid = os.getpid()
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "pid", None) != pid:  # never reuse a connection across fork
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=True)
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=10000")
            self._local.db = db
            self._local.pid = pid
        return db

    def close(self) -> None:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

"""Rate and concurrency limits of Serve calls, shared by every gateway process of one cluster.

The state is an SQLite file in the run dir (``serve-limits.db``): a token bucket per key (requests per
second, a burst) and one row per call under way (concurrency). Each check and take is one short write
transaction, so N processes see one set of counters. Nothing here needs to survive a crash (counters start
afresh), so the file is not synced. A process that dies leaves its calls' rows behind: every process beats a
heartbeat, and rows of a process whose heartbeat stopped are removed.
"""

from __future__ import annotations

import math
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from raywarden.config import ServeLimit
from raywarden.files import PRIVATE_FILE_MODE

HEARTBEAT_EVERY_S = 5.0
DEAD_AFTER_S = 30.0
_SCHEMA = (
    # full_at: when the bucket is full again at its rate; from then on it is the same as no bucket at all.
    "CREATE TABLE IF NOT EXISTS token_buckets (key TEXT PRIMARY KEY, tokens REAL NOT NULL, updated REAL NOT NULL, "
    "full_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS slots (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, "
    "instance TEXT NOT NULL, started REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS slots_by_key ON slots(key)",
    "CREATE TABLE IF NOT EXISTS instances (instance TEXT PRIMARY KEY, seen REAL NOT NULL)",
)


@dataclass(frozen=True)
class Ticket:
    slots: tuple[int, ...]


@dataclass(frozen=True)
class Over:
    """Why a call is over a limit, and when to try again (whole seconds, for Retry-After)."""

    key: str
    what: str  # "rate" or "concurrency"
    retry_after: int


def capacity(limit: ServeLimit) -> float:
    return float(limit.burst) if limit.burst > 0 else max(1.0, float(math.ceil(limit.rate)))


class LimitStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.instance = f"{os.getpid()}-{secrets.token_hex(4)}"
        if not path.exists():
            fd = os.open(path, os.O_CREAT | os.O_RDWR, PRIVATE_FILE_MODE)
            os.close(fd)
        self._db = sqlite3.connect(path, timeout=10.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")  # counters, not records: nothing to keep across a crash
        for statement in _SCHEMA:
            self._db.execute(statement)
        self._last_beat = 0.0
        self.heartbeat()

    def close(self) -> None:
        try:
            self._db.execute("DELETE FROM slots WHERE instance = ?", (self.instance,))
            self._db.execute("DELETE FROM instances WHERE instance = ?", (self.instance,))
        finally:
            self._db.close()

    def acquire(self, limits: list[tuple[str, ServeLimit]], now: float | None = None) -> Ticket | Over:
        """Take one token and one slot under every key, or none at all and say which limit is reached."""
        moment = time.time() if now is None else now
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            updates: list[tuple[float, float, str, float]] = []
            for key, limit in limits:
                if limit.rate > 0:
                    cap = capacity(limit)
                    row = db.execute("SELECT tokens, updated FROM token_buckets WHERE key = ?", (key,)).fetchone()
                    tokens = cap if row is None else min(cap, row[0] + max(0.0, moment - row[1]) * limit.rate)
                    if tokens < 1.0:
                        db.execute("ROLLBACK")
                        return Over(key, "rate", max(1, math.ceil((1.0 - tokens) / limit.rate)))
                    updates.append((tokens - 1.0, moment, key, moment + (cap - tokens + 1.0) / limit.rate))
                if limit.concurrency > 0:
                    (running,) = db.execute("SELECT COUNT(*) FROM slots WHERE key = ?", (key,)).fetchone()
                    if running >= limit.concurrency:
                        db.execute("ROLLBACK")
                        return Over(key, "concurrency", 1)
            db.executemany(
                "INSERT INTO token_buckets (key, tokens, updated, full_at) VALUES (?3, ?1, ?2, ?4) "
                "ON CONFLICT(key) DO UPDATE SET tokens = ?1, updated = ?2, full_at = ?4",
                updates,
            )
            slots = []
            for key, limit in limits:
                if limit.concurrency > 0:
                    cur = db.execute(
                        "INSERT INTO slots (key, instance, started) VALUES (?, ?, ?)", (key, self.instance, moment)
                    )
                    slots.append(int(cur.lastrowid or 0))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self.heartbeat(moment)
        return Ticket(tuple(slots))

    def release(self, ticket: Ticket) -> None:
        if ticket.slots:
            self._db.executemany("DELETE FROM slots WHERE id = ?", [(s,) for s in ticket.slots])

    def heartbeat(self, now: float | None = None) -> None:
        """Say this process is alive (at most every few seconds), and clear what dead ones left."""
        moment = time.time() if now is None else now
        if moment - self._last_beat < HEARTBEAT_EVERY_S:
            return
        self._last_beat = moment
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT INTO instances (instance, seen) VALUES (?1, ?2) ON CONFLICT(instance) DO UPDATE SET seen = ?2",
                (self.instance, moment),
            )
            dead = [i for (i,) in db.execute("SELECT instance FROM instances WHERE seen < ?", (moment - DEAD_AFTER_S,))]
            db.executemany("DELETE FROM slots WHERE instance = ?", [(i,) for i in dead])
            db.executemany("DELETE FROM instances WHERE instance = ?", [(i,) for i in dead])
            db.execute("DELETE FROM token_buckets WHERE full_at <= ?", (moment,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def running(self, key: str) -> int:
        (count,) = self._db.execute("SELECT COUNT(*) FROM slots WHERE key = ?", (key,)).fetchone()
        return int(count)

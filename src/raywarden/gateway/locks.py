"""One holder per name at a time (a package being uploaded, a submission id being claimed or deleted), so that
a check and the change it guards cannot interleave with another request's, in this worker or in another:
an asyncio lock within the process, then ``flock`` on one of a fixed set of lock files shared by every worker
of the gateway (names hash onto them; two names on one file only wait for each other)."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

LOCK_FILES = 64


class KeyedLocks:
    def __init__(self, folder: Path | None = None, namespace: str = "") -> None:
        """``folder``: where the lock files shared between worker processes are (None: this process only)."""
        self._locks: dict[str, asyncio.Lock] = {}
        self._folder = folder
        self._namespace = namespace

    @asynccontextmanager
    async def holding(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                if self._folder is None:
                    yield
                else:
                    fd = await _acquire(self._folder, self._namespace, key)
                    try:
                        yield
                    finally:
                        os.close(fd)  # closing the descriptor releases the flock
        finally:
            if not lock.locked() and self._locks.get(key) is lock:
                del self._locks[key]


async def _acquire(folder: Path, namespace: str, key: str) -> int:
    """Polled, never blocking the event loop and never left held by a cancelled request."""
    slot = int.from_bytes(hashlib.sha256(f"{namespace}\0{key}".encode()).digest()[:4], "big") % LOCK_FILES
    fd = os.open(folder / f"{namespace}-{slot:02d}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                await asyncio.sleep(0.005)
    except BaseException:
        os.close(fd)
        raise

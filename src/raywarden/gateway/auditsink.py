"""Where the gateway's records go: the decision record is awaited until durable, the outcome record joins the
next group commit without delaying the answer (docs/audit.md, "Durability").

Every gateway process (each worker, and the single process of the offline tests) writes through
``LocalAudit`` around its own ``AuditLog``; the log serialises its writers across processes (audit/writer.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from raywarden.audit import AuditLog, AuditUnavailable

log = logging.getLogger("raywarden.gateway")


class AuditSink(Protocol):
    async def append_async(self, record: Mapping[str, Any]) -> int:
        """Return once ``record`` is durable (its seq); raise AuditUnavailable or AuditRecordError."""
        ...

    def append_later(self, record: Mapping[str, Any]) -> None:
        """Submit ``record`` now, to be made durable with the next batch; a failure fails the log."""
        ...

    async def drain(self) -> None:
        """Wait for every record submitted with ``append_later``."""
        ...

    @property
    def queued(self) -> int: ...


class LocalAudit:
    """The gateway's records written by this process's own ``AuditLog`` (its writer thread).

    A log that failed (disk full, I/O error) fails closed for good. With several workers, ``on_failed`` tells
    the others (through the supervisor), and ``fail`` is how they hear it: then every worker refuses, not
    only the one whose write failed, until the gateway is restarted."""

    def __init__(self, audit: AuditLog, on_failed: Callable[[str], None] | None = None) -> None:
        self.log = audit
        self._later: set[asyncio.Task[int]] = set()
        self._on_failed = on_failed
        self._failure: str | None = None

    def fail(self, reason: str) -> None:
        self._failure = reason

    async def append_async(self, record: Mapping[str, Any]) -> int:
        if self._failure is not None:
            raise AuditUnavailable(self._failure, hint="another gateway worker could not write the audit log")
        try:
            return await self.log.append_async(record)
        except AuditUnavailable as exc:
            if self.log.failed and self._on_failed is not None and self._failure is None:
                self._failure = exc.message.removeprefix("audit log unavailable: ")
                self._on_failed(self._failure)
            raise

    def append_later(self, record: Mapping[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self.append_async(record))
        self._later.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[int]) -> None:
        self._later.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            log.error("audit: an outcome record was not written: %s", getattr(error, "message", error))

    async def drain(self) -> None:
        while self._later:
            await asyncio.gather(*list(self._later), return_exceptions=True)

    @property
    def queued(self) -> int:
        return len(self._later)

    def close(self) -> None:
        self.log.close()

"""Where the gateway's records go: the decision record is awaited until durable, the outcome record joins the
next group commit without delaying the answer (docs/audit.md, "Durability").

Every gateway process (each worker, and the single process of the offline tests) writes through
``LocalAudit`` around its own ``AuditLog``; the log serialises its writers across processes (audit/writer.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from raywarden.audit import AuditLog

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
    """The gateway's records written by this process's own ``AuditLog`` (its writer thread)."""

    def __init__(self, audit: AuditLog) -> None:
        self.log = audit
        self._later: set[asyncio.Task[int]] = set()

    async def append_async(self, record: Mapping[str, Any]) -> int:
        return await self.log.append_async(record)

    def append_later(self, record: Mapping[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self.log.append_async(record))
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

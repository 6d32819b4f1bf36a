"""Where the gateway's records go: the decision record is awaited until durable, the outcome record joins the
next group commit without delaying the answer (docs/audit.md, "Durability").

Every gateway process (each worker, and the single process of the offline tests) writes through
``LocalAudit`` around its own ``AuditLog``; the log serialises its writers across processes (audit/writer.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from raywarden.audit import AuditLog, AuditUnavailable

log = logging.getLogger("raywarden.gateway")
# How often ``drain`` looks whether the records submitted with ``append_later`` are all settled.
DRAIN_POLL_S = 0.005


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
        # Records submitted with ``append_later`` and those settled: each counter has one writer (the event
        # loop, the log's writer thread), so their difference is the queue without a lock.
        self._submitted = 0
        self._settled = 0
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
            self._heard(exc)
            raise

    def append_later(self, record: Mapping[str, Any]) -> None:
        """The record joins the log's next batch (audit/writer.py ``submit_later``): no task, no future, and no
        turn of the writer of its own; a failure is logged and fails the log as ``append_async`` would."""
        if self._failure is not None:
            log.error("audit: an outcome record was not written: %s", self._failure)
            return
        loop = asyncio.get_running_loop()

        def done(error: BaseException | None) -> None:  # on the writer thread
            self._settled += 1
            if error is not None:
                log.error("audit: an outcome record was not written: %s", getattr(error, "message", error))
                if isinstance(error, AuditUnavailable):
                    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
                        loop.call_soon_threadsafe(self._heard, error)

        self._submitted += 1  # before the writer can settle it
        try:
            self.log.submit_later(record, done)
        except AuditUnavailable as exc:
            self._submitted -= 1
            log.error("audit: an outcome record was not written: %s", exc.message)
            self._heard(exc)

    def _heard(self, exc: AuditUnavailable) -> None:
        """A write failed: with several workers, the others are told (once) to refuse too."""
        if self.log.failed and self._on_failed is not None and self._failure is None:
            self._failure = exc.message.removeprefix("audit log unavailable: ")
            self._on_failed(self._failure)

    async def drain(self) -> None:
        while self.queued:
            await asyncio.sleep(DRAIN_POLL_S)

    @property
    def queued(self) -> int:
        return self._submitted - self._settled

    def close(self) -> None:
        self.log.close()

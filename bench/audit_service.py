"""The alternative bench/audit_workers_bench.py measures against the gateway's choice (each worker its own
writer of the one log, docs/audit.md "Several gateway workers"): one writer process fed over local sockets,
whose writer thread group-commits what every worker sent meanwhile with one write and one fsync.

The wire format is one JSON object per line: ``{"i": N, "r": RECORD}`` to the writer, ``{"i": N, "s": SEQ}``
(durable) or ``{"i": N, "e": MESSAGE, "h": HINT, "k": "record"|"unavailable"}`` back, in any order. A worker
whose writer goes away fails every waiting and later append with ``AuditUnavailable``: nothing it decides
after that is forwarded (principle 6).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Callable, Mapping
from typing import Any

from raywarden.audit.errors import AuditRecordError, AuditUnavailable
from raywarden.audit.writer import AuditLog

log = logging.getLogger(__name__)

# A record is at most 1 MiB once written (writer.MAX_RECORD_BYTES); its JSON on the wire a little more.
MAX_LINE_BYTES = 2 * 1024 * 1024
_UNAVAILABLE = "audit log unavailable: "
_encode = json.JSONEncoder(allow_nan=False, check_circular=True, separators=(",", ":")).encode


class AuditService:
    """The writer's side: serves any number of worker connections, all feeding one ``AuditLog``."""

    def __init__(self, audit: AuditLog, on_record: Callable[[], None] | None = None) -> None:
        self.audit = audit
        self._on_record = on_record
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, sock: socket.socket) -> None:
        """Answer one worker until it closes its end."""
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_LINE_BYTES)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    log.error("audit service: a worker sent a line over %d bytes; closing it", MAX_LINE_BYTES)
                    return
                if not line:
                    return
                self._accept(line, writer)
        finally:
            writer.close()

    def _accept(self, line: bytes, writer: asyncio.StreamWriter) -> None:
        try:
            message = json.loads(line)
            ident, record = message["i"], message["r"]
            if not isinstance(record, dict):
                raise TypeError("record is not an object")
        except (ValueError, KeyError, TypeError) as exc:
            log.error("audit service: unreadable message from a worker: %s", exc)
            return
        task = asyncio.ensure_future(self._append(ident, record, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _append(self, ident: object, record: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        try:
            seq = await self.audit.append_async(record)
            reply: dict[str, Any] = {"i": ident, "s": seq}
        except AuditRecordError as exc:
            reply = {"i": ident, "e": exc.message, "h": exc.hint, "k": "record"}
        except AuditUnavailable as exc:
            reply = {"i": ident, "e": exc.message.removeprefix(_UNAVAILABLE), "h": exc.hint, "k": "unavailable"}
        if self._on_record is not None:
            self._on_record()
        if not writer.is_closing():
            writer.write(_encode(reply).encode() + b"\n")


class AuditClient:
    """A worker's side: ``append_async`` returns once the record is durable; ``append_later`` submits an
    outcome record to the same group commit without waiting for it."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[int]] = {}
        self._next = 0
        self._failure: str | None = None
        self._later: set[asyncio.Future[int]] = set()

    async def start(self) -> None:
        reader, writer = await asyncio.open_unix_connection(sock=self._sock, limit=MAX_LINE_BYTES)
        self._writer = writer
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader))

    @property
    def failed(self) -> bool:
        return self._failure is not None

    @property
    def queued(self) -> int:
        """Records sent and not yet durable."""
        return len(self._waiting)

    def submit(self, record: Mapping[str, Any]) -> asyncio.Future[int]:
        """Send ``record``; the future resolves to its seq once it is durable."""
        if self._failure is not None:
            raise AuditUnavailable(self._failure, hint="the gateway's audit writer stopped: restart the gateway")
        if self._writer is None:
            raise AuditUnavailable("the audit client is not started")
        try:
            line = _encode({"i": self._next, "r": record}).encode() + b"\n"
        except (TypeError, ValueError) as exc:
            raise AuditRecordError(f"audit record is not JSON: {exc}") from None
        if len(line) > MAX_LINE_BYTES:
            raise AuditRecordError(f"audit record of {len(line)} bytes exceeds {MAX_LINE_BYTES}")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[self._next] = future
        self._next += 1
        self._writer.write(line)
        return future

    async def append_async(self, record: Mapping[str, Any]) -> int:
        return await self.submit(record)

    def append_later(self, record: Mapping[str, Any]) -> None:
        future = self.submit(record)
        self._later.add(future)
        future.add_done_callback(_forget(self._later))

    async def drain(self) -> None:
        """Wait until every record submitted with ``append_later`` is durable (or failed)."""
        while self._later:
            await asyncio.gather(*list(self._later), return_exceptions=True)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        reason = "the gateway's audit writer closed the connection"
        try:
            while line := await reader.readline():
                reply = json.loads(line)
                future = self._waiting.pop(reply["i"], None)
                if future is None or future.done():
                    continue
                if "s" in reply:
                    future.set_result(int(reply["s"]))
                elif reply.get("k") == "record":
                    future.set_exception(AuditRecordError(str(reply["e"]), hint=reply.get("h")))
                else:
                    future.set_exception(AuditUnavailable(str(reply["e"]), hint=reply.get("h")))
        except (OSError, ValueError, KeyError, asyncio.LimitOverrunError) as exc:
            reason = f"the connection to the gateway's audit writer failed: {exc}"
        self._fail(reason)

    def _fail(self, reason: str) -> None:
        self._failure = reason
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(AuditUnavailable(reason, hint="restart the gateway"))

    async def close(self) -> None:
        await self.drain()
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
        self._fail("the audit client is closed")


def _forget(pending: set[asyncio.Future[int]]) -> Callable[[asyncio.Future[int]], None]:
    def done(future: asyncio.Future[int]) -> None:
        pending.discard(future)
        if not future.cancelled() and future.exception() is not None:
            error = future.exception()
            log.error("audit: an outcome record was not written: %s", getattr(error, "message", error))

    return done

"""One write per answer: what uvicorn writes in one turn of the event loop leaves in one TLS record.

uvicorn writes an answer's status line and headers, then its body, as two writes: over TLS that is two records,
two encryptions and two ``send`` calls, for answers that are mostly a few hundred bytes. A profile of the gateway
under load put those writes at about a sixth of a worker's CPU. ``CoalescingTransport`` sits between uvicorn's
protocol and the TLS transport: writes made in the same turn of the loop are joined and handed on at the end of
it (``call_soon``), in order. Everything else is the TLS transport's own; ``close`` hands on what is pending
first, ``abort`` drops it, as the transport underneath would. Once ``FLUSH_AT_BYTES`` are pending they are
handed on at once: the TLS transport then pauses the protocol's writes as it would without the wrapper, so an
app streaming from memory to a peer that reads nothing stops at the high-water mark instead of buffering here.
"""

from __future__ import annotations

import asyncio
from typing import Any

# Small answers are joined; past this, writes go on at once, and the transport's flow control sees them.
FLUSH_AT_BYTES = 16 * 1024


class CoalescingTransport(asyncio.Transport):
    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))
        self._pending_bytes += len(data)
        if self._pending_bytes >= FLUSH_AT_BYTES:
            self.flush()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._pending_bytes = 0
        self._transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._pending_bytes

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

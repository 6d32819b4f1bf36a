"""Read deadlines and a connection bound for the gateway's HTTP protocols (docs/architecture.md, "Slow clients").

uvicorn closes a connection that is idle between requests (keep-alive), but not one that trickles a request's
headers or body: a peer that completed TLS could hold a connection, and its buffers, for ever. Each connection
gets one timer that, when it fires, checks what the connection is waiting for:

* a request's headers: the whole block must arrive within ``header_seconds`` of the connection's start or of
  the previous answer's end, or the peer gets 408 and the connection is closed (no request exists yet, so
  nothing is audited; the gateway's log says so);
* a request's body: some bytes must arrive every ``body_idle_seconds``, or the connection is closed; the app
  then sees a disconnect and its outcome record says ``client_timeout`` (``timed_out`` below);
* an answer: once the peer has stopped reading and the transport has paused writing, it must resume within
  ``body_idle_seconds``, or the connection is aborted (its unsent bytes dropped: closing would wait for the
  peer to read them). Without this, a peer asking for answers it never reads holds each connection for ever.

A worker holds at most ``max_connections``; a new one beyond that closes the connection idle the longest
(between requests), or is refused when every connection is busy.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

CONNECTION_STATE_KEY = "raywarden.connection"
_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
    b"content-length: 36\r\n\r\nrequest headers not received in time"
)


@dataclass(frozen=True)
class ReadLimits:
    header_seconds: float
    body_idle_seconds: float
    max_connections: int
    # A request's line and headers together, in bytes (heads.py): past it the peer gets 431.
    head_bytes: int = 64 * 1024


class ConnectionMark:
    """Per-connection facts the app reads through ``scope["state"][CONNECTION_STATE_KEY]``."""

    def __init__(self) -> None:
        self.timed_out = False


class ReadDeadlines:
    """Mixed into uvicorn's protocol classes (before them in the bases); uses their public attributes
    ``transport``, ``loop``, ``cycle``, ``flow``, ``app_state`` and ``server_state``."""

    limits = ReadLimits(header_seconds=30.0, body_idle_seconds=60.0, max_connections=1024)

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    cycle: Any
    flow: Any
    app_state: dict[str, Any]
    server_state: Any

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        now = self.loop.time()
        self._waiting_since = now  # start of the wait for the next request's headers
        self._last_data = now
        self._write_paused_since: float | None = None  # the transport paused writing: the peer is not reading
        self._mark = ConnectionMark()
        self.app_state = {**self.app_state, CONNECTION_STATE_KEY: self._mark}
        self._timer: asyncio.TimerHandle | None = self.loop.call_later(self.limits.header_seconds, self._check)
        self._make_room()

    def data_received(self, data: bytes) -> None:
        self._last_data = self.loop.time()
        super().data_received(data)  # type: ignore[misc]

    def pause_writing(self) -> None:
        self._write_paused_since = self.loop.time()
        super().pause_writing()  # type: ignore[misc]

    def resume_writing(self) -> None:
        self._write_paused_since = None
        super().resume_writing()  # type: ignore[misc]

    def on_response_complete(self) -> None:
        self._waiting_since = self.loop.time()
        super().on_response_complete()  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)  # type: ignore[misc]

    def _between_requests(self) -> bool:
        return self.cycle is None or bool(self.cycle.response_complete)

    def _check(self) -> None:
        self._timer = None
        protocol: object = self.transport.get_protocol()
        if self.transport.is_closing() or protocol is not self:
            return  # closed, or handed to the WebSocket protocol
        now = self.loop.time()
        if self._write_paused_since is not None:
            due = self._write_paused_since + self.limits.body_idle_seconds
            if now >= due:
                log.warning("aborting a connection from %s: its answer was not read in time", self._peer())
                self._mark.timed_out = True
                self.transport.abort()
                return
        elif self._between_requests():
            due = self._waiting_since + self.limits.header_seconds
            if now >= due:
                log.warning("closing a connection from %s: request headers not received in time", self._peer())
                self.transport.write(_TIMEOUT_ANSWER)
                self.transport.close()
                return
        elif self.cycle.more_body and not self.flow.read_paused:
            due = self._last_data + self.limits.body_idle_seconds
            if now >= due:
                log.warning("closing a connection from %s: request body stalled", self._peer())
                self._mark.timed_out = True
                self.transport.close()
                return
        else:
            due = now + self.limits.body_idle_seconds  # the app has the request; nothing to read for now
            self._last_data = now
        self._timer = self.loop.call_at(max(due, now + 0.05), self._check)

    def _peer(self) -> str:
        peer = self.transport.get_extra_info("peername")
        return str(peer[0]) if isinstance(peer, tuple) and peer else "an unknown peer"

    def _make_room(self) -> None:
        connections: set[Any] = self.server_state.connections
        if len(connections) <= self.limits.max_connections:
            return
        idle = [
            c
            for c in connections
            if c is not self and isinstance(c, ReadDeadlines) and c._between_requests() and hasattr(c, "_mark")
        ]
        if idle:
            oldest = min(idle, key=lambda c: c._waiting_since)
            log.warning("connection limit (%d) reached: closing the longest idle one", self.limits.max_connections)
            oldest.transport.close()
            return
        log.warning("connection limit (%d) reached and every connection busy: refusing", self.limits.max_connections)
        self.transport.close()

"""Request heads the app never sees: a byte bound on them, and audited answers for what the protocol refuses
(docs/architecture.md, "Slow clients").

Both listeners take anonymous TLS peers, and the header deadline (deadlines.py) bounds how long a head may
take, not how large it is: httptools hands uvicorn whatever it is fed, so a head of many MiB would be buffered
whole before the app could answer. Here the bytes of each request head are counted as they arrive, and a head
over ``ReadLimits.head_bytes`` is answered 431 without being read further. h11 (the fallback) keeps its own
bound, the same number, on a head that has not ended (``h11_max_incomplete_event_size``, protocols.py); a
whole head that arrives in one read may be larger, up to the size of a read. A head that begins in the same
read as the end of the request before it is not in the byte count (the parser alone knows where that request
ended), so httptools' callbacks also count what they hand uvicorn of each head (its URL and header fields) and
stop the parser past the bound. What either parser rejects
(a malformed request line, a bad header byte, Content-Length with Transfer-Encoding) reaches
``send_400_response``, which uvicorn answers without the app: both answers get a decision record and an outcome
record here, the decision durable before the answer, as every refusal in the app (gateway/exchange.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from raywarden.audit import AuditRecordError, AuditUnavailable
from raywarden.errors import RaywardenError
from raywarden.gateway.auditsink import AuditSink
from raywarden.gateway.coalesce import CoalescingTransport
from raywarden.gateway.deadlines import ReadDeadlines
from raywarden.gateway.exchange import Exchange
from raywarden.gateway.middleware.headers import security_headers
from raywarden.gateway.responses import AUDIT_DOWN, GATEWAY_HEADER, Refusal
from raywarden.policy.engine import PolicyEngine

log = logging.getLogger(__name__)
_REASONS = {400: b"Bad Request", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}
HINT_MALFORMED = "send a well-formed HTTP/1.1 request (RFC 9112)"


class ProtocolRefusals:
    """Writes the two records of a request refused before it was parsed, as the listener's app would."""

    def __init__(self, audit: AuditSink, engine: Callable[[], PolicyEngine], listener: str | None = None) -> None:
        self.audit = audit
        self.engine = engine
        self.listener = listener

    async def record(self, refusal: Refusal, source: str, method: str, raw_path: bytes) -> str:
        """The decision record, durable, then the outcome record; returns the request id."""
        scope = {"type": "http", "client": (source, 0), "method": method, "raw_path": raw_path}
        ex = Exchange.begin(scope, self.audit, self.engine())
        ex.extra["refused_by"] = "http_protocol"
        if self.listener is not None:
            ex.extra["listener"] = self.listener
        await ex.refuse(refusal)
        return ex.request_id


def too_large(limit: int) -> Refusal:
    return Refusal(
        431,
        "request header fields too large",
        reason=f"request head over {limit} bytes",
        hint=f"the request line and headers together may take at most {limit} bytes",
    )


def malformed(detail: str) -> Refusal:
    return Refusal(400, "malformed HTTP request", reason=f"HTTP parser: {detail}"[:300], hint=HINT_MALFORMED)


class HeadTooLarge(RaywardenError):
    """Raised in an httptools callback to stop the parser in the middle of a read."""


class HeadLimit(ReadDeadlines):
    """Mixed into uvicorn's protocol classes before ``ReadDeadlines``. ``count_heads``: the parser reports
    where heads end (httptools' ``on_headers_complete`` and ``on_message_complete``); h11 does not, and
    bounds its heads itself."""

    refusals: ProtocolRefusals | None = None
    count_heads = False

    url: bytes
    parser: Any

    def connection_made(self, transport: asyncio.Transport) -> None:
        # Bytes of the request head under way, or None while a request's body or answer is (not a head).
        self._head_bytes: int | None = 0 if self.count_heads else None
        self._refused = False
        super().connection_made(CoalescingTransport(transport, self.loop))  # one TLS record per answer

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # reading is paused; whatever was already read is dropped, not parsed
        while self._head_bytes is not None and data:
            room = self.limits.head_bytes - self._head_bytes
            if len(data) <= room:
                self._head_bytes += len(data)
                break
            # Feed only what fits: if the head ends in it, the rest is a body (or the next request).
            if room > 0:
                self._head_bytes += room
                super().data_received(data[:room])
                data = data[room:]
            if self._refused or self._gone():
                return
            if self._head_bytes is not None and self._head_bytes >= self.limits.head_bytes:
                self._refuse(too_large(self.limits.head_bytes))
                return
        if data:
            super().data_received(data)

    def on_message_begin(self) -> None:
        self._parsed_head_bytes = 0
        super().on_message_begin()  # type: ignore[misc]

    def on_url(self, url: bytes) -> None:
        self._parsed(len(url))
        super().on_url(url)  # type: ignore[misc]

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)  # type: ignore[misc]

    def _parsed(self, size: int) -> None:
        """Counts what httptools hands uvicorn of the head under way; past the bound, stops the parser
        (uvicorn then calls ``send_400_response``, which answers 431)."""
        self._parsed_head_bytes += size
        if self._parsed_head_bytes > self.limits.head_bytes:
            raise HeadTooLarge(f"request head over {self.limits.head_bytes} bytes")

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        super().on_headers_complete()  # type: ignore[misc]

    def on_message_complete(self) -> None:
        super().on_message_complete()  # type: ignore[misc]
        if self.count_heads:
            self._head_bytes = 0  # the next request's head starts here

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to what the parser rejects, audited like any refusal. uvicorn calls it from its
        ``except`` clause, so the parser's own error (what exactly it rejected) is the one being handled."""
        error = sys.exc_info()[1]  # sys.exception() is 3.11+
        if error is not None and isinstance(error.__context__, HeadTooLarge):  # httptools chains our callback's
            self._refuse(too_large(self.limits.head_bytes))
            return
        detail = str(error) if error is not None else ""
        self._refuse(malformed(detail or msg))

    def _check(self) -> None:
        if self._refused:
            self._timer = None  # the refusal closes the connection
            return
        super()._check()

    def _gone(self) -> bool:
        protocol: object = self.transport.get_protocol()
        return self.transport.is_closing() or protocol is not self  # closed, or handed to the WebSocket protocol

    def _refuse(self, refusal: Refusal) -> None:
        """Stop reading, record the refusal, then answer it and close."""
        if self._refused:
            return
        self._refused = True
        if not self.transport.is_closing():
            self.transport.pause_reading()
        log.warning("refusing a request from %s: %s", self._peer(), refusal.reason)
        task = self.loop.create_task(self._answer(refusal, self._method(), bytes(getattr(self, "url", b""))))
        tasks: set[asyncio.Task[None]] = self.server_state.tasks  # uvicorn waits for these at shutdown
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _answer(self, refusal: Refusal, method: str, raw_path: bytes) -> None:
        """The answer waits for the decision record; whatever happens, the connection closes (its read
        deadline no longer does)."""
        request_id = None
        try:
            if self.refusals is not None:
                request_id = await self.refusals.record(refusal, self._peer(), method, raw_path)
        except (AuditUnavailable, AuditRecordError) as exc:
            log.error("audit log unavailable: a refused request was not recorded: %s", exc.message)
            refusal = AUDIT_DOWN  # what every request gets while the log cannot be written (gateway/app.py)
        finally:
            if not self.transport.is_closing():
                self.transport.write(self._answer_bytes(refusal, request_id))
                self.transport.close()

    def _method(self) -> str:
        try:
            return str(self.parser.get_method().decode("latin-1")) if self.count_heads else "-"
        except Exception:  # the parser had not read a whole method yet
            return "-"

    def _answer_bytes(self, refusal: Refusal, request_id: str | None) -> bytes:
        body: dict[str, Any] = {"error": refusal.message, "request_id": request_id, "hint": refusal.hint}
        content = json.dumps({k: v for k, v in body.items() if v is not None}).encode()
        headers: list[tuple[bytes, bytes]] = [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
            (b"connection", b"close"),
            (b"cache-control", b"no-store"),
            (GATEWAY_HEADER[0].encode(), GATEWAY_HEADER[1].encode()),
            *security_headers(""),
        ]
        if request_id is not None:
            headers.append((b"x-request-id", request_id.encode()))
        status = f"HTTP/1.1 {refusal.status} ".encode() + _REASONS.get(refusal.status, b"Error")
        lines = [status, *(name + b": " + value for name, value in headers)]
        return b"\r\n".join(lines) + b"\r\n\r\n" + content

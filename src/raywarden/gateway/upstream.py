"""The one connection from the gateway to Ray: its dashboard on loopback, with Ray's token injected.

Answers the gateway filters are read whole, up to a size cap (``read``); every other answer, and every
package upload, streams through in chunks (``open``), so that a 100 MB package never sits in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from raywarden.errors import RaywardenError
from raywarden.gateway.request import encode_path
from raywarden.secret import Secret

# Request headers a client may pass on to Ray. Everything else (Authorization, Cookie,
# X-Ray-Authorization, hop-by-hop headers, Host, Forwarded...) is dropped by omission.
# User-Agent is not forwarded either: Ray answers 405 to browser-looking requests on state-changing methods.
FORWARDED_REQUEST_HEADERS = frozenset({"accept", "accept-encoding", "content-type"})
# Response headers Ray may pass back. Set-Cookie in particular never reaches the client.
FORWARDED_RESPONSE_HEADERS = frozenset(
    {"content-type", "content-encoding", "cache-control", "etag", "last-modified", "content-disposition"}
)
# Ray's own lookups the gateway makes (a job's record, the job list for a submission id check).
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
CHUNK_BYTES = 1 << 16
Body = bytes | AsyncIterable[bytes] | None


class UpstreamUnavailable(RaywardenError):
    """Ray's dashboard did not answer (down, starting, or timed out)."""


class AnswerTooLarge(RaywardenError):
    """An answer the gateway must read whole (to filter it) is larger than its cap."""


@dataclass(frozen=True)
class UpstreamResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class UpstreamStream:
    """An answer of Ray's still arriving: its status and headers, and its body chunk by chunk. ``close`` it."""

    status: int
    headers: list[tuple[str, str]]
    _response: aiohttp.ClientResponse
    _on_error: Callable[[str], None]

    @property
    def length(self) -> int | None:
        """The body's declared length (None: chunked, or not said)."""
        return self._response.content_length

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(CHUNK_BYTES):
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._on_error("body")
            raise UpstreamUnavailable(f"{type(exc).__name__} while Ray sent its answer: {exc}") from None

    async def read(self, limit: int) -> bytes:
        """The whole body; AnswerTooLarge as soon as it exceeds ``limit`` bytes."""
        declared = self._response.content_length
        if declared is not None and declared > limit:
            raise AnswerTooLarge(f"Ray's answer of {declared} bytes exceeds the gateway's cap of {limit} bytes")
        buffer = bytearray()
        async for chunk in self.chunks():
            buffer += chunk
            if len(buffer) > limit:
                raise AnswerTooLarge(f"Ray's answer exceeds the gateway's cap of {limit} bytes")
        return bytes(buffer)

    def close(self) -> None:
        self._response.release()


class Upstream:
    def __init__(
        self,
        base_url: str,
        token: Secret,
        timeout_s: float,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        # Streams last as long as they last (a log download); only connecting and each read are bounded.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=5, sock_read=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._on_error = on_error or (lambda _: None)

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token.reveal()}"}

    async def start(self) -> None:
        # trust_env=False: proxy variables must never divert Ray's token to another host.
        self._session = aiohttp.ClientSession(timeout=self._timeout, trust_env=False, auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise UpstreamUnavailable("gateway is not started")
        return self._session

    async def open(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body: Body,
        *,
        traceparent: str | None = None,
        timing: Callable[[float], None] | None = None,
    ) -> UpstreamStream:
        """Send the request (``body`` bytes or chunks, streamed) and return once Ray's status and headers are
        in. ``path`` and ``query`` are already encoded (gateway/request.py): sent exactly as they are."""
        forwarded = {k: v for k, v in headers.items() if k in FORWARDED_REQUEST_HEADERS}
        forwarded.update(self._auth())
        if traceparent is not None:
            forwarded["traceparent"] = traceparent
        url = URL(self.base_url + path + (f"?{query}" if query else ""), encoded=True)
        started = time.monotonic()
        try:
            resp = await self.session.request(method, url, headers=forwarded, data=body, allow_redirects=False)
        except (aiohttp.ClientError, TimeoutError) as exc:
            ours = _body_error(exc)
            if ours is not None:  # the request body failed on the client's side (too large, client left)
                raise ours from None
            self._on_error("connect" if isinstance(exc, aiohttp.ClientConnectionError) else "request")
            raise UpstreamUnavailable(f"{type(exc).__name__}: {exc}") from None
        finally:
            if timing is not None:
                timing(started)
        kept = [(k.lower(), v) for k, v in resp.headers.items() if k.lower() in FORWARDED_RESPONSE_HEADERS]
        return UpstreamStream(resp.status, kept, resp, self._on_error)

    async def request(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body: Body,
        *,
        limit: int = MAX_RESPONSE_BYTES,
        traceparent: str | None = None,
        timing: Callable[[float], None] | None = None,
    ) -> UpstreamResponse:
        """As ``open``, with the whole answer read (AnswerTooLarge beyond ``limit`` bytes)."""
        answer = await self.open(method, path, query, headers, body, traceparent=traceparent, timing=timing)
        try:
            data = await answer.read(limit)
        finally:
            answer.close()
        return UpstreamResponse(answer.status, answer.headers, data)

    async def job_info(self, job_id: str) -> dict[str, Any] | None:
        """Ray's record of a job, used to give policies its owner; None when Ray does not know it."""
        resp = await self.request("GET", encode_path(f"/api/jobs/{job_id}"), "", {"accept": "application/json"}, None)
        if resp.status == 404:
            return None
        if resp.status != 200:
            self._on_error("status")
            raise UpstreamUnavailable(f"Ray answered {resp.status} for job {job_id}")
        try:
            info = json.loads(resp.body)
        except (ValueError, RecursionError):
            raise UpstreamUnavailable(f"Ray's record of job {job_id} is not JSON") from None
        return info if isinstance(info, dict) else None

    async def websocket(self, path: str, traceparent: str | None = None) -> aiohttp.ClientWebSocketResponse:
        headers = self._auth()
        if traceparent is not None:
            headers["traceparent"] = traceparent
        try:
            url = URL(self.base_url + path, encoded=True)
            return await self.session.ws_connect(url, headers=headers, autoping=True)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._on_error("websocket")
            raise UpstreamUnavailable(f"{type(exc).__name__}: {exc}") from None


def _body_error(exc: BaseException) -> RaywardenError | None:
    """Our own error raised by the streamed body's iterator, which aiohttp wraps as a connection error."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, RaywardenError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


# How long the gateway waits for a peer's answer to its WebSocket close before it drops the connection.
WEBSOCKET_CLOSE_S = 2.0


async def close_websocket(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Close an upstream WebSocket, waiting at most WEBSOCKET_CLOSE_S for the peer's close frame. aiohttp's
    close() reads until that frame comes, and a peer that writes without reading (Ray's log tail of a running
    job, a streaming Serve application) never sends it: close() would read its messages for as long as it
    writes, and the outcome record would wait with it. Cancelled, close() drops the connection instead."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(ws.close(), WEBSOCKET_CLOSE_S)

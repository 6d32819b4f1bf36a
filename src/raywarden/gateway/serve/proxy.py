"""The connection to Serve's HTTP proxy on loopback: requests forwarded with the headers the gateway checked,
answers streamed back chunk by chunk as Serve produces them (LLM tokens, server-sent events), WebSockets
relayed both ways.

Request headers: the caller's credentials (``Authorization``, the gateway's own cookies) never reach the
application; headers that steer Serve itself (its timeout, disconnect handling and ingress router) or claim a
client address are dropped; ``X-Forwarded-For`` is the TCP peer the gateway saw, ``X-Forwarded-Proto`` is https
and ``X-Request-Id`` is the audit log's request id (Serve adopts it, so its logs join the audit log).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from starlette.types import Message, Receive, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from yarl import URL

from raywarden.errors import RaywardenError
from raywarden.gateway.responses import Refusal
from raywarden.gateway.upstream import close_websocket

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "trailers", "upgrade", "proxy-connection"}
)
DROPPED_REQUEST = HOP_BY_HOP | frozenset(
    {
        "host",
        "content-length",
        "authorization",
        "proxy-authorization",
        "x-ray-authorization",
        "forwarded",
        "x-real-ip",
        "x-request-id",
        "x-request-timeout-seconds",  # Serve's own request timeout: the gateway's limits hold
        "x-request-disconnect-disabled",  # would keep a replica running after the caller left
        "x-body-truncated",
        # WebSocket handshake fields: aiohttp makes its own for the connection to Serve.
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    }
)
DROPPED_REQUEST_PREFIXES = ("x-forwarded-", "x-serve-router-")
DROPPED_RESPONSE = HOP_BY_HOP | frozenset({"server", "date", "proxy-authenticate", "x-request-id"})
# The gateway's browser cookies (gateway/cookies.py, web/oidc_flow.py): an application never sees or sets them.
GATEWAY_COOKIE_PREFIXES = ("__host-raywarden", "__secure-raywarden", "raywarden")
# A revoked key, a disabled account or a withdrawn permission ends a stream or WebSocket within about this long.
REVALIDATE_EVERY_S = 1.0


class ServeUnavailable(RaywardenError):
    """Serve's proxy could not be reached, or broke off."""


class CredentialLapsed(RaywardenError):
    """The caller's credential, or its permission to call the application, ended while its answer streamed."""


@dataclass
class Counted:
    bytes_in: int = 0
    bytes_out: int = 0
    first_byte_ms: float | None = None
    answered: bool = False  # the answer's status line went out
    closed_by: str = "serve"
    extra: dict[str, object] = field(default_factory=dict)


def _cookies_without_gateways(value: str) -> str | None:
    kept = [
        part.strip()
        for part in value.split(";")
        if part.strip() and not part.strip().lower().startswith(GATEWAY_COOKIE_PREFIXES)
    ]
    return "; ".join(kept) or None


def request_headers(raw: list[tuple[bytes, bytes]], peer: str, request_id: str) -> list[tuple[str, str]]:
    kept: list[tuple[str, str]] = []
    for name_raw, value_raw in raw:
        name = name_raw.decode("latin-1").lower()
        value = value_raw.decode("latin-1")
        if name in DROPPED_REQUEST or name.startswith(DROPPED_REQUEST_PREFIXES):
            continue
        if name == "cookie":
            cookie = _cookies_without_gateways(value)
            if cookie is not None:
                kept.append((name, cookie))
            continue
        kept.append((name, value))
    kept += [("x-forwarded-for", peer), ("x-forwarded-proto", "https"), ("x-request-id", request_id)]
    return kept


def response_headers(raw: aiohttp.ClientResponse) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    for name, value in raw.raw_headers:
        lowered = name.decode("latin-1").lower()
        if lowered in DROPPED_RESPONSE:
            continue
        if lowered == "content-length" and "transfer-encoding" in raw.headers:
            continue
        if lowered == "set-cookie" and value.decode("latin-1").strip().lower().startswith(GATEWAY_COOKIE_PREFIXES):
            continue
        if lowered == "x-content-type-options":
            continue
        headers.append((lowered.encode("latin-1"), value))
    headers.append((b"x-content-type-options", b"nosniff"))
    return headers


class ServeProxy:
    def __init__(self, base_url: str, idle_timeout_s: float, max_duration_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.idle_timeout_s = idle_timeout_s
        self.max_duration_s = max_duration_s
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # Keep idle connections well below Serve's keep_alive_timeout_s (90 s), so none is closed under a request.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(
            connector=connector, trust_env=False, auto_decompress=False, skip_auto_headers=("User-Agent",)
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise ServeUnavailable("the Serve listener is not started")
        return self._session

    def url(self, encoded_path: str, query: bytes) -> URL:
        suffix = f"?{query.decode('ascii')}" if query else ""
        return URL(self.base_url + encoded_path + suffix, encoded=True)

    async def forward(
        self,
        method: str,
        url: URL,
        headers: list[tuple[str, str]],
        body: bytes,
        send: Send,
        receive: Receive,
        counted: Counted,
        still_valid: Callable[[], Awaitable[None]],
    ) -> int:
        """Forward one call and stream Serve's answer to ``send``; returns the status sent (499: the caller left).
        ``still_valid`` raises CredentialLapsed when the caller's credential lapsed (checked every
        REVALIDATE_EVERY_S while streaming)."""
        timeout = aiohttp.ClientTimeout(total=self.max_duration_s, sock_connect=5, sock_read=self.idle_timeout_s)
        stream = asyncio.get_running_loop().create_task(
            self._stream(method, url, headers, body, send, counted, still_valid, timeout)
        )
        watcher = asyncio.get_running_loop().create_task(_disconnected(receive))
        done, _ = await asyncio.wait({stream, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if stream in done:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            return stream.result()
        # The caller left: leaving the request closes the connection to Serve, which cancels the replica's work.
        stream.cancel()
        await asyncio.gather(stream, return_exceptions=True)
        counted.closed_by = "client"
        return 499

    async def _stream(
        self,
        method: str,
        url: URL,
        headers: list[tuple[str, str]],
        body: bytes,
        send: Send,
        counted: Counted,
        still_valid: Callable[[], Awaitable[None]],
        timeout: aiohttp.ClientTimeout,
    ) -> int:
        loop = asyncio.get_running_loop()
        begun = loop.time()
        try:
            async with self.session.request(
                method,
                url,
                headers=headers,
                data=body if body else None,
                allow_redirects=False,
                timeout=timeout,
                skip_auto_headers=("Accept", "Accept-Encoding", "Content-Type", "User-Agent"),
            ) as resp:
                # The clock runs from the decision (just before this call), not from Serve's answer: an answer
                # that took longer than the interval is checked before any of it is sent.
                checked = begun
                if loop.time() - checked >= REVALIDATE_EVERY_S:
                    await still_valid()
                    checked = loop.time()
                counted.answered = True
                await send({"type": "http.response.start", "status": resp.status, "headers": response_headers(resp)})
                async for chunk in resp.content.iter_any():
                    if loop.time() - checked >= REVALIDATE_EVERY_S:
                        await still_valid()
                        checked = loop.time()
                    if counted.first_byte_ms is None:
                        counted.first_byte_ms = round((loop.time() - begun) * 1000, 3)
                    counted.bytes_out += len(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ServeUnavailable(f"{type(exc).__name__}: {exc}") from None

    # -- WebSockets -------------------------------------------------------------------------------------------

    async def connect_websocket(
        self, url: URL, headers: list[tuple[str, str]], protocols: list[str]
    ) -> aiohttp.ClientWebSocketResponse:
        try:
            return await self.session.ws_connect(
                url, headers=headers, protocols=protocols, autoping=True, timeout=aiohttp.ClientWSTimeout(ws_close=5)
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise ServeUnavailable(f"the application refused the WebSocket (HTTP {exc.status})") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ServeUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def relay_websocket(
        self,
        client: WebSocket,
        upstream: aiohttp.ClientWebSocketResponse,
        counted: Counted,
        still_valid: Callable[[], Awaitable[None]],
    ) -> None:
        """Messages both ways until either side closes (or the credential lapses, or the call lasts too long)."""

        async def to_serve() -> str:
            while True:
                message = await client.receive()
                if message["type"] == "websocket.disconnect":
                    return "client"
                if message.get("text") is not None:
                    counted.bytes_in += len(message["text"].encode())
                    await upstream.send_str(message["text"])
                elif message.get("bytes") is not None:
                    counted.bytes_in += len(message["bytes"])
                    await upstream.send_bytes(message["bytes"])

        async def to_client() -> str:
            async for message in upstream:
                if message.type == aiohttp.WSMsgType.TEXT:
                    counted.bytes_out += len(message.data.encode())
                    await client.send_text(message.data)
                elif message.type == aiohttp.WSMsgType.BINARY:
                    counted.bytes_out += len(message.data)
                    await client.send_bytes(message.data)
                else:
                    break
            return "serve"

        async def revalidate() -> str:
            # On a clock, not on the caller's messages: an application that streams after one prompt would
            # otherwise keep a revoked caller listening until the time limit.
            while True:
                await asyncio.sleep(REVALIDATE_EVERY_S)
                await still_valid()

        tasks = [asyncio.get_running_loop().create_task(t()) for t in (to_serve, to_client, revalidate)]
        try:
            done, _ = await asyncio.wait(tasks, timeout=self.max_duration_s, return_when=asyncio.FIRST_COMPLETED)
            counted.closed_by = "timeout"
            for task in done:
                exc = task.exception()
                if isinstance(exc, CredentialLapsed):
                    counted.closed_by = "credential lapsed"
                elif isinstance(exc, WebSocketDisconnect):
                    counted.closed_by = "client"
                elif exc is None:
                    counted.closed_by = task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await close_websocket(upstream)
        code = upstream.close_code or 1000
        counted.extra["close_code"] = code
        if counted.closed_by == "client" or client.client_state == WebSocketState.DISCONNECTED:
            return  # nothing to tell a client that left
        try:
            await client.close(code=_close_code(counted.closed_by))
        except (RuntimeError, OSError):
            pass  # the client left meanwhile (uvicorn's ClientDisconnected is an OSError)


def _close_code(closed_by: str) -> int:
    if closed_by == "serve":
        return 1000  # normal: the application closed
    return 1008 if "credential" in closed_by else 1001  # policy violation, or going away (a time limit)


async def _disconnected(receive: Receive) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """A call's whole body, refused (413) past ``limit``: Serve's proxy reads it whole too."""
    hint = f"Serve calls take bodies of at most {limit} bytes (serve_max_body_bytes in the cluster config)"
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise Refusal(413, f"request body larger than {limit} bytes", hint=hint)
    data = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Refusal(400, "the client left before its body arrived", reason="client disconnected")
        data += message.get("body", b"")
        if len(data) > limit:
            raise Refusal(413, f"request body larger than {limit} bytes", hint=hint)
        if not message.get("more_body"):
            return bytes(data)

"""The one connection from the gateway to Ray: its dashboard on loopback, with Ray's token injected."""

from __future__ import annotations

import json
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
MAX_RESPONSE_BYTES = 256 * 1024 * 1024


class UpstreamUnavailable(RaywardenError):
    """Ray's dashboard did not answer (down, starting, or timed out)."""


@dataclass(frozen=True)
class UpstreamResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class Upstream:
    def __init__(self, base_url: str, token: Secret, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=5)
        self._session: aiohttp.ClientSession | None = None

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

    async def request(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes | None
    ) -> UpstreamResponse:
        """``path`` and ``query`` are already encoded (gateway/request.py): sent exactly as they are."""
        forwarded = {k: v for k, v in headers.items() if k in FORWARDED_REQUEST_HEADERS}
        forwarded.update(self._auth())
        url = URL(self.base_url + path + (f"?{query}" if query else ""), encoded=True)
        try:
            async with self.session.request(method, url, headers=forwarded, data=body, allow_redirects=False) as resp:
                # StreamReader.read(n) returns what has arrived so far, not n bytes: read to the end.
                buffer = bytearray()
                async for chunk in resp.content.iter_chunked(1 << 16):
                    buffer += chunk
                    if len(buffer) > MAX_RESPONSE_BYTES:
                        raise UpstreamUnavailable("Ray's response exceeds the gateway's size limit")
                data = bytes(buffer)
                kept = [(k.lower(), v) for k, v in resp.headers.items() if k.lower() in FORWARDED_RESPONSE_HEADERS]
                return UpstreamResponse(resp.status, kept, data)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def job_info(self, job_id: str) -> dict[str, Any] | None:
        """Ray's record of a job, used to give policies its owner; None when Ray does not know it."""
        resp = await self.request("GET", encode_path(f"/api/jobs/{job_id}"), "", {"accept": "application/json"}, None)
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise UpstreamUnavailable(f"Ray answered {resp.status} for job {job_id}")
        try:
            info = json.loads(resp.body)
        except (ValueError, RecursionError):
            raise UpstreamUnavailable(f"Ray's record of job {job_id} is not JSON") from None
        return info if isinstance(info, dict) else None

    async def websocket(self, path: str) -> aiohttp.ClientWebSocketResponse:
        try:
            url = URL(self.base_url + path, encoded=True)
            return await self.session.ws_connect(url, headers=self._auth(), autoping=True)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(f"{type(exc).__name__}: {exc}") from None

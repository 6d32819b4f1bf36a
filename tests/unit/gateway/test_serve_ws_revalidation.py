"""A Serve WebSocket whose application pushes while the caller stays silent (an LLM streaming tokens after one
prompt) must still end once the caller's credential lapses (revoked key, disabled account, expired certificate).

The relay checks the credential again every REVALIDATE_EVERY_S, but only when the caller sends a message: a
caller that sends one prompt and then only listens keeps receiving until serve_max_duration_s (an hour by
default), however long ago its credential was revoked. The upstream here is a real aiohttp WebSocket server on
loopback that pushes a message every few milliseconds; the caller's side is the ASGI channel uvicorn gives the
listener, which never delivers another message from the caller.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from starlette.websockets import WebSocket

from raywarden.gateway.serve import proxy as proxy_module
from raywarden.gateway.serve.proxy import Counted, CredentialLapsed, ServeProxy
from tests.unit.gateway.loopback_app import serve_on_loopback

pytestmark = pytest.mark.unit

MAX_DURATION_S = 4.0


async def _pushing_upstream() -> tuple[web.AppRunner, int]:
    async def pushes(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        closing = asyncio.get_running_loop().create_task(ws.receive())  # done once the other side closes
        try:
            i = 0
            while not closing.done():
                await ws.send_str(f"tick {i}")
                await asyncio.sleep(0.01)
                i += 1
        except ConnectionResetError:  # the relay dropped the connection
            pass
        finally:
            closing.cancel()
        return ws

    app = web.Application()
    app.router.add_get("/ws", pushes)
    return await serve_on_loopback(app)


async def _relay_after_revocation() -> tuple[Counted, list[dict[str, Any]]]:
    runner, port = await _pushing_upstream()
    proxy = ServeProxy(f"http://127.0.0.1:{port}", idle_timeout_s=30.0, max_duration_s=MAX_DURATION_S)
    await proxy.start()
    sent: list[dict[str, Any]] = []
    connected = False

    async def receive() -> dict[str, Any]:
        nonlocal connected
        if not connected:
            connected = True
            return {"type": "websocket.connect"}
        await asyncio.Event().wait()  # the caller sent its prompt already and now only listens
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def revoked() -> None:
        raise CredentialLapsed("API key revoked")

    try:
        scope = {"type": "websocket", "path": "/push/ws", "headers": [], "subprotocols": []}
        client = WebSocket(scope, receive, send)  # type: ignore[arg-type]
        await client.accept()
        upstream = await proxy.connect_websocket(proxy.url("/ws", b""), [], [])
        counted = Counted()
        await proxy.relay_websocket(client, upstream, counted, revoked)
        return counted, sent
    finally:
        await proxy.close()
        await runner.cleanup()


def test_a_listening_websocket_ends_when_the_credential_lapses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy_module, "REVALIDATE_EVERY_S", 0.2)
    counted, sent = asyncio.run(_relay_after_revocation())
    # Every check of the credential fails, so the relay must end on the first one, long before the time limit,
    # and tell the caller why (1008, policy violation), not "going away" (1001) at the time limit.
    assert counted.closed_by == "credential lapsed", (counted.closed_by, counted.bytes_out)
    assert sent[-1] == {"type": "websocket.close", "code": 1008, "reason": ""}


def test_the_upstream_really_pushes_without_a_caller_message() -> None:
    """The setting above is what a caller of an LLM over a WebSocket does: one prompt, then only listening."""

    async def one() -> int:
        runner, port = await _pushing_upstream()
        try:
            async with aiohttp.ClientSession() as session, session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                got = 0
                async for _ in ws:
                    got += 1
                    if got == 5:
                        break
                return got
        finally:
            await runner.cleanup()

    assert asyncio.run(one()) == 5

"""Closing an upstream WebSocket whose peer writes and never reads: Ray's log tail of a running job does that,
and so can a streaming Serve application. Such a peer never answers a close frame, so the gateway must not
wait for its answer for ever (the relay's outcome record is written only after the close). A real aiohttp
server and client over loopback TCP."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from raywarden.gateway.upstream import close_websocket

pytestmark = pytest.mark.unit


async def _writes_for_ever(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    while not ws.closed:  # never reads, so never sees the client's close frame
        try:
            await ws.send_str("more\n")
        except ConnectionError:
            break
        await asyncio.sleep(0.01)
    return ws


async def _close_while_the_peer_writes() -> int | None:
    app = web.Application()
    app.router.add_get("/tail", _writes_for_ever)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"http://127.0.0.1:{port}/tail")
            assert (await ws.receive()).data == "more\n"
            # Not inside receive(): the relay was sending to its client when it was told to stop.
            await asyncio.wait_for(close_websocket(ws), 30)  # a bound on a hang, not a timing
            return ws.close_code
    finally:
        await runner.cleanup()


def test_an_upstream_that_writes_and_never_reads_is_closed_without_its_answer() -> None:
    assert asyncio.run(_close_while_the_peer_writes()) == aiohttp.WSCloseCode.ABNORMAL_CLOSURE

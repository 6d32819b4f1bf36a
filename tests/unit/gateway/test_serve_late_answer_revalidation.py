"""A Serve call whose credential lapses while the application is still working must not get its answer.

The HTTP relay (gateway/serve/proxy.py) re-decides every REVALIDATE_EVERY_S while it streams, but it starts
that clock when Serve's response headers arrive, not when the call was authorized: an application that thinks
for minutes and then answers at once (a non-streamed completion) hands the whole answer to a caller whose key
was revoked or whose group was removed in the meantime. The upstream is a real aiohttp server on loopback.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest
from aiohttp import web

from raywarden.gateway.serve.proxy import Counted, CredentialLapsed, ServeProxy
from tests.unit.gateway.loopback_app import serve_on_loopback

pytestmark = pytest.mark.unit

THINKS_S = 3.0


async def _slow_upstream() -> tuple[web.AppRunner, int]:
    async def answer(request: web.Request) -> web.Response:
        await asyncio.sleep(THINKS_S)  # the caller's key is revoked meanwhile
        return web.Response(text="the whole completion")

    app = web.Application()
    app.router.add_post("/v1/chat", answer)
    return await serve_on_loopback(app)


async def _call_revoked_while_waiting() -> list[MutableMapping[str, Any]]:
    runner, port = await _slow_upstream()
    proxy = ServeProxy(f"http://127.0.0.1:{port}", idle_timeout_s=30.0, max_duration_s=30.0)
    await proxy.start()
    sent: list[MutableMapping[str, Any]] = []
    loop = asyncio.get_running_loop()
    revoked_at = loop.time() + 0.5

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the caller stays
        raise AssertionError("unreachable")

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async def still_valid() -> None:
        if loop.time() >= revoked_at:
            raise CredentialLapsed("API key revoked")

    try:
        url = proxy.url("/v1/chat", b"")
        try:
            await proxy.forward("POST", url, [], b"prompt", send, receive, Counted(), still_valid)
        except CredentialLapsed:
            pass
    finally:
        await proxy.close()
        await runner.cleanup()
    return sent


def test_an_answer_that_arrives_after_revocation_is_not_delivered() -> None:
    sent = asyncio.run(_call_revoked_while_waiting())
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert b"completion" not in body, (
        f"the answer reached a caller revoked {THINKS_S - 0.5:.1f}s before it was sent: {body!r}"
    )

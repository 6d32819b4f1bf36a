"""A job's log tail over WebSocket (the one WebSocket route): decided and recorded like the same request
over HTTP, with the same statuses; Ray's messages relayed until either side closes, or until the credential
it was opened with stops being accepted. A tail (`logs --follow`) can outlive its certificate or token, so
the credential is checked again at its expiry and every RECHECK_EVERY_S (a revocation, a disabled principal):
then the gateway closes the socket with 1008 (policy violation) and the outcome record says why."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from starlette.websockets import WebSocket, WebSocketDisconnect

from raywarden.errors import AuthenticationError
from raywarden.gateway.authn import Identity
from raywarden.gateway.authz import authorize, resource_for, unknown_job
from raywarden.gateway.exchange import Exchange
from raywarden.gateway.handlers import Services, authenticate, credential_of
from raywarden.gateway.request import encode_path
from raywarden.gateway.route_model import Routed
from raywarden.gateway.upstream import close_websocket


class LogTail:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.upstream = services.upstream

    async def handle(self, ex: Exchange, found: Routed, ws: WebSocket) -> None:
        route = found.route
        identity = await authenticate(self.services, ex, ws.scope, session=route.session)
        resource = await resource_for(ex, found, identity, self.services.jobs)
        await authorize(ex, route, identity, resource)
        await ex.allow()
        if not resource.known:
            raise unknown_job(resource.entity.id)
        upstream = await self.upstream.websocket(
            encode_path(route.upstream_path(found.target.path)), traceparent=ex.trace.traceparent
        )
        await ws.accept()
        relay = asyncio.ensure_future(_relay(upstream, ws))
        watch = asyncio.ensure_future(self._lapse(ws, identity, session=route.session))
        lapsed: str | None = None
        closed_by = "error"  # neither side closed it: the relay failed
        try:
            done, _ = await asyncio.wait({relay, watch}, return_when=asyncio.FIRST_COMPLETED)
            if watch in done:
                lapsed = watch.result()
            closed_by = "credential" if lapsed is not None else relay.result()
        finally:
            for task in (relay, watch):
                task.cancel()
            await asyncio.gather(relay, watch, return_exceptions=True)
            await close_websocket(upstream)
            await ex.finish(101, closed_by=closed_by, reason=lapsed)
        try:
            if lapsed is not None:
                await ws.close(code=1008, reason="credential no longer accepted: log in again")
            else:
                await ws.close()
        except RuntimeError:
            pass  # the client already closed

    async def _lapse(self, ws: WebSocket, identity: Identity, *, session: bool) -> str:
        """Returns (the audit reason) once the credential the socket was opened with is refused."""
        while True:
            wait = RECHECK_EVERY_S
            if identity.expires_at is not None:
                wait = min(wait, max(0.0, identity.expires_at - time.time()) + 0.01)
            await asyncio.sleep(wait)
            try:
                await credential_of(self.services, ws.scope, session=session)
            except AuthenticationError as exc:
                return exc.reason


RECHECK_EVERY_S = 5.0


async def _relay(upstream: aiohttp.ClientWebSocketResponse, ws: WebSocket) -> str:
    """Ray's messages to the client until one side closes: who closed it."""
    try:
        async for message in upstream:
            if message.type.name == "TEXT":
                await ws.send_text(message.data)
            elif message.type.name == "BINARY":
                await ws.send_bytes(message.data)
            else:
                break
    except WebSocketDisconnect:
        return "client"
    return "ray"

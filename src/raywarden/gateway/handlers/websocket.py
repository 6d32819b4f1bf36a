"""A job's log tail over WebSocket (the one WebSocket route): decided and recorded like the same request
over HTTP, with the same statuses; Ray's messages relayed until either side closes."""

from __future__ import annotations

from starlette.websockets import WebSocket, WebSocketDisconnect

from raywarden.gateway.authz import authorize, resource_for, unknown_job
from raywarden.gateway.exchange import Exchange
from raywarden.gateway.handlers import Services, authenticate
from raywarden.gateway.request import encode_path
from raywarden.gateway.routes import Routed


class LogTail:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.upstream = services.upstream

    async def handle(self, ex: Exchange, found: Routed, ws: WebSocket) -> None:
        route = found.route
        identity = authenticate(self.services, ex, ws.scope, session=route.session)
        resource = await resource_for(ex, found, identity, self.services.jobs)
        await authorize(ex, route, identity, resource)
        await ex.allow()
        if not resource.known:
            raise unknown_job(resource.entity.id)
        upstream = await self.upstream.websocket(
            encode_path(route.upstream_path(found.target.path)), traceparent=ex.trace.traceparent
        )
        await ws.accept()
        closed_by = "ray"
        try:
            async for message in upstream:
                if message.type.name == "TEXT":
                    await ws.send_text(message.data)
                elif message.type.name == "BINARY":
                    await ws.send_bytes(message.data)
                else:
                    break
        except WebSocketDisconnect:
            closed_by = "client"
        finally:
            await upstream.close()
            await ex.finish(101, closed_by=closed_by)
        try:
            await ws.close()
        except RuntimeError:
            pass  # the client already closed

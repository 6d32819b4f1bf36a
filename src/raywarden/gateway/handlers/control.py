"""raywarden's own API (``kind="control"``), answered by the handlers of gateway/control.

Identity routes are decided by Cedar before the handler runs. Anonymous routes (enrollment, node join) carry
their credential in the body: the handler is what checks it, so its answer is the decision that is recorded.
Either way the body is parsed within bounds first: bad input is a 400 before any handler sees it.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from raywarden.gateway import responses
from raywarden.gateway.authz import CLUSTER, Resource, authorize
from raywarden.gateway.bodies import load_json_object
from raywarden.gateway.control import ControlHandler, ControlRequest
from raywarden.gateway.exchange import Exchange
from raywarden.gateway.handlers import Services, authenticate, body_of
from raywarden.gateway.route_model import Routed


class Control:
    def __init__(self, services: Services, handlers: dict[str, ControlHandler]) -> None:
        self.services = services
        self.handlers = handlers

    async def handle(self, ex: Exchange, found: Routed, request: Request) -> Response:
        route = found.route
        identity = None
        if route.auth == "identity":
            identity = await authenticate(self.services, ex, request.scope, session=route.session)
        body = await body_of(self.services, request, route)
        parsed = load_json_object(body) if route.body == "json" else {}
        if identity is not None:
            await authorize(ex, route, identity, Resource(CLUSTER))
            await ex.allow()
        handler = self.handlers[route.action]
        result = await handler(ControlRequest(ex.request_id, ex.source, found.params, body, identity, parsed))
        if identity is None:
            await ex.decided_by_handler(result.status < 400, result.status, **result.audit)
            await ex.finish(result.status)
        else:
            await ex.finish(result.status, **result.audit)
        headers = {responses.GATEWAY_HEADER[0]: responses.GATEWAY_HEADER[1], "cache-control": "no-store"}
        refused: dict[str, str] = {}
        if identity is not None and result.status >= 400:
            # What was refused, as the gateway's own refusals say it to a caller who authenticated (refusals.py).
            refused = {name: value for name, value in (("action", ex.action), ("resource", ex.resource)) if value}
        answer = {**result.body, **refused, "request_id": ex.request_id}
        return JSONResponse(answer, status_code=result.status, headers=headers)

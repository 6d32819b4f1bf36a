"""raywarden's console (``kind="console_page"`` and ``kind="console_anonymous"``), answered by gateway/web.

A console page is decided by Cedar like any route, then rendered. An anonymous page (sign-in, sign-out, the
console's static answers) checks its own credential, and its answer is the decision recorded. Forms are
parsed within bounds before any page sees them.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from raywarden.gateway.authz import CLUSTER, Resource, authorize
from raywarden.gateway.bodies import load_form
from raywarden.gateway.cookies import session_cookie
from raywarden.gateway.exchange import Exchange
from raywarden.gateway.handlers import Services, authenticate, body_of
from raywarden.gateway.responses import Refusal
from raywarden.gateway.route_model import Routed
from raywarden.gateway.routes import FORM_FIELDS
from raywarden.gateway.web import Console
from raywarden.gateway.web.oidc_flow import BINDING_COOKIE
from raywarden.gateway.web.services import PageRequest


def _not_configured() -> Refusal:
    return Refusal(
        404,
        "no such route",
        reason="browser access is not configured on this gateway",
        hint="the console and the dashboard need the gateway's browser access (docs/browser.md)",
    )


class ConsolePages:
    """Pages for an identity: decided, recorded, then rendered."""

    def __init__(self, services: Services, console: Console | None) -> None:
        self.services = services
        self.console = console

    async def handle(self, ex: Exchange, found: Routed, request: Request) -> Response:
        if self.console is None:
            raise _not_configured()
        route = found.route
        identity = await authenticate(self.services, ex, request.scope, session=route.session)
        await body_of(self.services, request, route)
        viewer = await authorize(ex, route, identity, Resource(CLUSTER))
        await ex.allow()
        page = PageRequest(
            route.page,
            found.target,
            found.params,
            ex.source,
            cookie=session_cookie(request.headers.get("cookie")),
            identity=identity,
            viewer=viewer,
        )
        result = await self.console.page(page)
        await ex.finish(result.status, **result.audit)
        return result.response


class ConsoleAnonymous:
    """Sign-in, sign-out and static answers: the page's own check is the decision."""

    def __init__(self, services: Services, console: Console | None) -> None:
        self.services = services
        self.console = console

    async def handle(self, ex: Exchange, found: Routed, request: Request) -> Response:
        if self.console is None:
            raise _not_configured()
        route = found.route
        body = await body_of(self.services, request, route)
        form = load_form(body, FORM_FIELDS[route.page]) if route.body == "form" else {}
        cookies = request.headers.get("cookie")
        page = PageRequest(
            route.page,
            found.target,
            found.params,
            ex.source,
            host=request.headers.get("host", ""),
            cookie=session_cookie(cookies),
            binding=session_cookie(cookies, BINDING_COOKIE),
            form=form,
        )
        result = await self.console.anonymous(page)
        if result.audit.get("session_principal"):
            ex.resource = f"Principal::{result.audit['session_principal']}"
        await ex.decided_by_handler(not result.deny, result.status, **result.audit)
        await ex.finish(result.status)
        return result.response

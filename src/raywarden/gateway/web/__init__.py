"""raywarden's console: sign-in with a one-time link (or OIDC), sign-out, who am I, my jobs, and for admins
the principals and the audit log; and Ray's Metrics page drawn without Grafana. Server-rendered HTML
(gateway/web/templates). The app authenticates, authorizes and audits every request before a page runs;
``Console`` dispatches on the route's ``page`` (routes.py).
"""

from __future__ import annotations

from raywarden.errors import ConfigError
from raywarden.gateway.routes import CONSOLE_ROUTES
from raywarden.gateway.upstream import Upstream
from raywarden.gateway.web.services import PageHandler, PageRequest, PageResult, WebServices
from raywarden.gateway.web.signin import SignIn
from raywarden.gateway.web.views import Views

__all__ = ["Console", "PageRequest", "PageResult", "WebServices"]


class Console:
    def __init__(self, services: WebServices, upstream: Upstream) -> None:
        self.web = services
        self.anonymous_pages: dict[str, PageHandler] = SignIn(services).handlers()
        self.identity_pages: dict[str, PageHandler] = Views(services, upstream).handlers()
        for route in CONSOLE_ROUTES:
            pages = self.anonymous_pages if route.kind == "console_anonymous" else self.identity_pages
            if route.page not in pages:
                raise ConfigError(f"console route {route.template} names no page handler ({route.page!r})")

    async def anonymous(self, request: PageRequest) -> PageResult:
        return await self.anonymous_pages[request.page](request)

    async def page(self, request: PageRequest) -> PageResult:
        return await self.identity_pages[request.page](request)

    async def close(self) -> None:
        if self.web.metrics is not None:
            await self.web.metrics.prometheus.close()

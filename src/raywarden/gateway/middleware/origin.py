"""Cross-site requests (CSRF): they never change anything, and with a session cookie they read nothing.

API clients (the raywarden CLI, `ray job submit`) send neither Origin nor Sec-Fetch-*, and no session cookie,
so they pass unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from raywarden.config import ClusterConfig
from raywarden.gateway.cookies import session_cookie
from raywarden.gateway.middleware import header
from raywarden.gateway.middleware.host import gateway_host_names
from raywarden.gateway.responses import Refusal

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Requests a page of the gateway's own origin makes (or the user typing the URL).
SAME_ORIGIN_SITES = frozenset({"same-origin", "none"})


def gateway_origins(config: ClusterConfig) -> frozenset[str]:
    def each() -> Iterable[str]:
        for host in gateway_host_names(config):
            shown = f"[{host}]" if ":" in host else host
            yield f"https://{shown}:{config.listen.port}"
            if config.listen.port == 443:
                yield f"https://{shown}"

    return frozenset(each())


class OriginMiddleware:
    def __init__(self, app: ASGIApp, config: ClusterConfig) -> None:
        self.app = app
        self.origins = gateway_origins(config)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            self.check(
                str(scope.get("method", "GET")),
                header(scope, b"origin"),
                header(scope, b"sec-fetch-site"),
                header(scope, b"sec-fetch-mode"),
                session_cookie(header(scope, b"cookie")) is not None,
            )
        await self.app(scope, receive, send)

    def check(self, method: str, origin: str | None, site: str | None, mode: str | None, has_session: bool) -> None:
        if method in STATE_CHANGING:
            if origin is not None and origin not in self.origins:
                raise _cross_origin(f"{method} with foreign Origin {origin[:100]!r}")
            if site is not None and site not in SAME_ORIGIN_SITES:
                raise _cross_origin(f"{method} with Sec-Fetch-Site {site[:30]!r}")
            if has_session and origin is None and site is None:
                raise _cross_origin(f"{method} with a session cookie but neither Origin nor Sec-Fetch-Site")
        elif has_session and site is not None and site not in SAME_ORIGIN_SITES and mode != "navigate":
            # A foreign page's fetch()/<script>/<img> with the user's cookie (if SameSite ever lets it through).
            raise _cross_origin(f"{method} with a session cookie from Sec-Fetch-Site {site[:30]!r}")


def _cross_origin(reason: str) -> Refusal:
    return Refusal(
        403,
        "cross-origin request refused",
        reason=reason,
        hint="use the gateway's pages directly; other sites cannot act on your behalf",
    )

"""The security headers of every answer (refusals included), by area, and no CORS header ever."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from raywarden.gateway.route_model import DASHBOARD_MOUNT

# raywarden's own pages: no script at all, styles from the gateway only, forms post back to it only.
CONSOLE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# Ray's dashboard (a React app): its bundle and fonts from the gateway; MUI injects <style> elements.
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; frame-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# Profiling output is HTML/SVG built from user code's function names: rendered without script or origin.
PROFILE_CSP = "sandbox; frame-ancestors 'none'"
API_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"
# Metrics panels (gateway/metrics): console pages that the dashboard frames, from the same origin only.
PANEL_CSP = CONSOLE_CSP.replace("frame-ancestors 'none'", "frame-ancestors 'self'")
_PANEL_PATH = "/ui/metrics/"
_PROFILE_PATHS = tuple(f"{DASHBOARD_MOUNT}{p}" for p in ("/worker/", "/task/", "/memory_profile"))
_REPLACED = frozenset(
    {
        b"content-security-policy",
        b"x-frame-options",
        b"x-content-type-options",
        b"referrer-policy",
        b"cross-origin-opener-policy",
        b"cross-origin-resource-policy",
    }
)
_STARTS = frozenset({"http.response.start", "websocket.http.response.start"})


def csp_for(path: str) -> str:
    if path.startswith(_PANEL_PATH):
        return PANEL_CSP
    if path.startswith("/ui/") or path == "/ui":
        return CONSOLE_CSP
    if path.startswith(_PROFILE_PATHS):
        return PROFILE_CSP
    if path.startswith(f"{DASHBOARD_MOUNT}/"):
        return DASHBOARD_CSP
    return API_CSP


def security_headers(path: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-security-policy", csp_for(path).encode()),
        (b"x-frame-options", b"SAMEORIGIN" if path.startswith(_PANEL_PATH) else b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        # Sign-in links carry a code in the URL: no Referer may take it elsewhere. ("no-referrer" would make
        # Chromium send "Origin: null" on the console's own forms, which the Origin check refuses.)
        (b"referrer-policy", b"same-origin"),
        (b"cross-origin-opener-policy", b"same-origin"),
        (b"cross-origin-resource-policy", b"same-origin"),
    ]


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        added = security_headers(str(scope.get("path", "")))

        async def hardened(message: Message) -> None:
            if message["type"] in _STARTS:
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() not in _REPLACED and not k.lower().startswith(b"access-control-")
                ]
                message = {**message, "headers": headers + added}
            await send(message)

        await self.app(scope, receive, hardened)

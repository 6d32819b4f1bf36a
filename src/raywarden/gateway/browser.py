"""What browsers bring, handled in one place: DNS rebinding (Host allowlist), cross-site requests (Origin and
Sec-Fetch-Site on state-changing methods), the session cookie, and the security headers of every response.

API clients (the raywarden CLI, `ray job submit`) send neither Origin nor Sec-Fetch-*, and no session cookie,
so they pass these checks unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from http.cookies import CookieError, SimpleCookie

from starlette.types import Message, Scope, Send

from raywarden.gateway.responses import Refusal
from raywarden.gateway.routes import DASHBOARD_MOUNT
from raywarden.state import ClusterConfig

# __Host-: the browser only accepts it with Secure, Path=/ and no Domain, so no sibling host can set it.
SESSION_COOKIE = "__Host-raywarden-session"
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Requests a page of the gateway's own origin makes (or the user typing the URL).
SAME_ORIGIN_SITES = frozenset({"same-origin", "none"})

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
_PROFILE_PATHS = tuple(f"{DASHBOARD_MOUNT}{p}" for p in ("/worker/", "/task/", "/memory_profile"))


class BrowserGuard:
    """The Host allowlist and the cross-origin checks, built from the cluster config."""

    def __init__(self, config: ClusterConfig) -> None:
        self.port = config.listen.port
        names = {"localhost", "127.0.0.1", "::1", config.listen.host, *config.gateway_hosts}
        names.discard("0.0.0.0")  # noqa: S104 - a wildcard listen address is not a name browsers use
        names.discard("::")
        self.hosts = frozenset(n.lower().strip("[]") for n in names)
        self.origins = frozenset(self._origins())

    def _origins(self) -> Iterable[str]:
        for host in self.hosts:
            shown = f"[{host}]" if ":" in host else host
            yield f"https://{shown}:{self.port}"
            if self.port == 443:
                yield f"https://{shown}"

    def check_host(self, host_header: str | None) -> None:
        """Refuse a Host this gateway is not known by: a DNS-rebinding page reaches us under its own name."""
        if host_header is None:
            raise Refusal(400, "missing Host header", reason="request without a Host header")
        value = host_header.strip().lower()
        if value.startswith("["):
            host, _, rest = value[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ("" if not rest else "bad")
        else:
            host, sep, port = value.rpartition(":")
            if not sep:
                host, port = value, ""
        # A Host without a port is tolerated (some probes and proxies omit it): rebinding is about the name.
        port_ok = port in (str(self.port), "")
        if host not in self.hosts or not port_ok:
            raise Refusal(
                421,
                "this gateway does not serve that host name",
                reason=f"Host header {host_header[:100]!r} not in the gateway's host allowlist "
                "(DNS rebinding or misdirected request)",
                hint="use the gateway's own name; add others to gateway_hosts in the cluster config",
            )

    def check_origin(
        self, method: str, origin: str | None, site: str | None, mode: str | None, has_session: bool
    ) -> None:
        """Cross-site requests never change anything; with a session cookie they do not read either."""
        if method in STATE_CHANGING:
            if origin is not None and origin not in self.origins:
                raise Refusal(
                    403, "cross-origin request refused", reason=f"{method} with foreign Origin {origin[:100]!r}"
                )
            if site is not None and site not in SAME_ORIGIN_SITES:
                raise Refusal(403, "cross-origin request refused", reason=f"{method} with Sec-Fetch-Site {site[:30]!r}")
            if has_session and origin is None and site is None:
                raise Refusal(
                    403,
                    "cross-origin request refused",
                    reason=f"{method} with a session cookie but neither Origin nor Sec-Fetch-Site",
                )
        elif has_session and site is not None and site not in SAME_ORIGIN_SITES and mode != "navigate":
            # A foreign page's fetch()/<script>/<img> with the user's cookie (if SameSite ever lets it through).
            raise Refusal(
                403,
                "cross-origin request refused",
                reason=f"{method} with a session cookie from Sec-Fetch-Site {site[:30]!r}",
            )


def session_cookie(cookie_header: str | None, name: str = SESSION_COOKIE) -> str | None:
    """A cookie's value from the Cookie header (the session cookie unless ``name`` says otherwise)."""
    if not cookie_header or name not in cookie_header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(cookie_header)
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


def set_session_cookie(value: str, max_age_s: int) -> str:
    return f"{SESSION_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max(0, max_age_s)}"


def clear_session_cookie() -> str:
    return f"{SESSION_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"


# Metrics panels (gateway/metrics): console pages that the dashboard frames, from the same origin only.
PANEL_CSP = CONSOLE_CSP.replace("frame-ancestors 'none'", "frame-ancestors 'self'")
_PANEL_PATH = "/ui/metrics/"


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


def hardened_send(scope: Scope, send: Send) -> Send:
    """Wrap ``send`` so that every response carries the security headers and no CORS header at all."""
    path = str(scope.get("path", ""))

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [
                (k, v)
                for k, v in message.get("headers", [])
                if k.lower() not in _REPLACED and not k.lower().startswith(b"access-control-")
            ]
            message = {**message, "headers": headers + security_headers(path)}
        await send(message)

    return wrapped

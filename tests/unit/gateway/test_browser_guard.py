"""Host allowlist, Origin / Sec-Fetch-Site checks and security headers (gateway/middleware), and the session
cookie (gateway/cookies.py)."""

from __future__ import annotations

import pytest

from raywarden.config import ClusterConfig, Listen
from raywarden.gateway.cookies import session_cookie, set_session_cookie
from raywarden.gateway.middleware.headers import CONSOLE_CSP, DASHBOARD_CSP, PROFILE_CSP, csp_for
from raywarden.gateway.middleware.host import HostMiddleware
from raywarden.gateway.middleware.origin import OriginMiddleware
from raywarden.gateway.responses import Refusal

pytestmark = pytest.mark.unit
CONFIG = ClusterConfig(
    listen=Listen(host="0.0.0.0", port=8443),  # noqa: S104 - a wildcard listen
    gateway_hosts=["ray.example.org"],
)


async def _app(scope: object, receive: object, send: object) -> None:
    return None


HOST = HostMiddleware(_app, CONFIG)
ORIGIN = OriginMiddleware(_app, CONFIG)


@pytest.mark.parametrize(
    "host", ["localhost:8443", "127.0.0.1:8443", "[::1]:8443", "RAY.example.org:8443", "localhost", "[::1]"]
)
def test_known_hosts_pass(host: str) -> None:
    HOST.check(host)


@pytest.mark.parametrize(
    "host",
    [
        None,
        "evil.example:8443",
        "127.0.0.1:8444",
        "0.0.0.0:8443",
        "ray.example.org.evil:8443",
        "[::2]:8443",
        "127.0.0.1:8443:1",
        "127.0.0.1 :8443",
    ],
)
def test_rebinding_and_misdirected_hosts_are_refused(host: str | None) -> None:
    with pytest.raises(Refusal) as caught:
        HOST.check(host)
    assert caught.value.status in (400, 421)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_state_changing_requests_need_the_gateways_own_origin(method: str) -> None:
    ORIGIN.check(method, "https://localhost:8443", "same-origin", "cors", True)
    ORIGIN.check(method, None, None, None, False)  # API clients: no Origin, no cookie
    for origin, site, cookie in (
        ("https://evil.example", None, False),
        ("null", None, True),
        ("http://localhost:8443", None, True),
        (None, "cross-site", False),
        (None, "same-site", True),
        (None, None, True),
        ("https://localhost:8443", "cross-site", True),
    ):
        with pytest.raises(Refusal) as caught:
            ORIGIN.check(method, origin, site, "cors", cookie)
        assert caught.value.status == 403


def test_cross_site_reads_with_a_cookie_are_refused_but_navigation_is_not() -> None:
    ORIGIN.check("GET", None, "cross-site", "navigate", True)
    ORIGIN.check("GET", None, "cross-site", "cors", False)
    with pytest.raises(Refusal):
        ORIGIN.check("GET", None, "cross-site", "cors", True)
    with pytest.raises(Refusal):
        ORIGIN.check("GET", None, "same-site", "no-cors", True)


def test_cookie_attributes_and_parsing() -> None:
    header = set_session_cookie("abc", 3600)
    assert header.startswith("__Host-raywarden-session=abc;")
    for attribute in ("Path=/", "Secure", "HttpOnly", "SameSite=Strict", "Max-Age=3600"):
        assert attribute in header
    assert "Domain" not in header
    assert session_cookie("a=1; __Host-raywarden-session=xyz; b=2") == "xyz"
    assert session_cookie("raywarden-session=xyz") is None
    assert session_cookie(None) is None


def test_content_security_policies() -> None:
    assert csp_for("/ui/") == CONSOLE_CSP and "script-src" not in CONSOLE_CSP and "default-src 'none'" in CONSOLE_CSP
    assert csp_for("/dashboard/") == DASHBOARD_CSP and "'unsafe-eval'" not in DASHBOARD_CSP
    assert csp_for("/dashboard/worker/cpu_profile") == PROFILE_CSP
    assert csp_for("/dashboard/memory_profile") == PROFILE_CSP
    assert "frame-ancestors 'none'" in csp_for("/api/jobs/")

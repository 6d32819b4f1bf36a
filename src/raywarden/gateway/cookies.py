"""The browser session cookie: read from the Cookie header, set at sign-in, cleared at sign-out."""

from __future__ import annotations

from http.cookies import CookieError, SimpleCookie

# __Host-: the browser only accepts it with Secure, Path=/ and no Domain, so no sibling host can set it.
SESSION_COOKIE = "__Host-raywarden-session"


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

"""ASGI middleware of the gateway, one concern each, in the order a request meets them (gateway/app.py):
security headers on every answer (headers.py), then the Host allowlist (host.py), then cross-origin checks
(origin.py). The checks raise ``Refusal``; the app records and answers it like any other refusal. Both
listeners' apps first refuse a request that repeats a credential field (``single_credentials``)."""

from __future__ import annotations

from starlette.types import Scope

from raywarden.gateway.responses import Refusal

# Fields that carry a credential, each read once (``header``): a second one would be read as the first by the
# gateway and perhaps as the last by a proxy or log in front of it. RFC 9110 makes Authorization a singleton;
# RFC 6265 has a user agent send one Cookie header.
CREDENTIAL_FIELDS = (b"authorization", b"cookie")


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (names are lowercase in ASGI)."""
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def single_credentials(scope: Scope) -> None:
    """Refuse (400) a request that repeats a field carrying a credential: which one it acts as would depend
    on who reads it."""
    names = [key for key, _ in scope.get("headers", []) if key in CREDENTIAL_FIELDS]
    for name in CREDENTIAL_FIELDS:
        if names.count(name) > 1:
            field = name.decode().title()
            raise Refusal(
                400,
                f"more than one {field} header",
                reason=f"{names.count(name)} {field} headers in one request",
                hint=f"send one {field} header (a client or proxy added another)",
            )

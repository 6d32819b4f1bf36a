"""ASGI middleware of the gateway, one concern each, in the order a request meets them (gateway/app.py):
security headers on every answer (headers.py), then the Host allowlist (host.py), then cross-origin checks
(origin.py). The checks raise ``Refusal``; the app records and answers it like any other refusal."""

from __future__ import annotations

from starlette.types import Scope


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (names are lowercase in ASGI)."""
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None

"""Loopback HTTP calls doctor makes: the gateway without credentials, Ray's dashboard with its token."""

from __future__ import annotations

from typing import Any

import requests

from raywarden.doctor.context import DoctorContext
from raywarden.files import read_private
from raywarden.secret import Secret

TIMEOUT_S = 3.0


def gateway_refuses_anonymous(ctx: DoctorContext, host: str, port: int) -> tuple[bool, str]:
    """The gateway must answer over TLS (verified against the access CA) and refuse a request without a
    credential with its own 401. Returns (protected, what was seen)."""
    dial = "127.0.0.1" if host in ("0.0.0.0", "::", "::ffff:0.0.0.0") else host  # noqa: S104 - comparing
    url_host = f"[{dial}]" if ":" in dial else dial
    try:
        resp = requests.get(
            f"https://{url_host}:{port}/api/version",
            verify=str(ctx.state.access_ca_cert),
            timeout=TIMEOUT_S,
            allow_redirects=False,
        )
    except requests.exceptions.SSLError as exc:
        return False, f"TLS handshake failed: {type(exc).__name__}"
    except requests.RequestException as exc:
        return False, f"no answer: {type(exc).__name__}"
    if resp.status_code == 401 and resp.headers.get("x-raywarden-gateway") == "1":
        return True, "TLS verified against the access CA; an anonymous request got the gateway's 401"
    return False, f"an anonymous request got HTTP {resp.status_code}"


def ray_token(ctx: DoctorContext) -> Secret:
    return Secret(read_private(ctx.state.ray_token).decode().strip())


def dashboard_get(ctx: DoctorContext, path: str, *, token: Secret | None) -> requests.Response:
    """GET on Ray's dashboard, which listens on loopback only; the token is sent only when given."""
    if ctx.run is None:
        raise RuntimeError("dashboard_get needs a running cluster")
    headers: dict[str, Any] = {"Authorization": f"Bearer {token.reveal()}"} if token is not None else {}
    return requests.get(
        f"http://127.0.0.1:{ctx.run.ports.dashboard}{path}", headers=headers, timeout=TIMEOUT_S, allow_redirects=False
    )

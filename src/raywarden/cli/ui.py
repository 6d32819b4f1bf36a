"""`raywarden ui`: a one-time browser sign-in link for the current profile's identity."""

from __future__ import annotations

import webbrowser
from typing import Annotated, Any

import typer

from raywarden.cli.common import JsonOption, ProfileOption, console, err_console, print_json
from raywarden.errors import ConfigError, GatewayRequestError, PKIError

OpenOption = Annotated[bool, typer.Option("--open", help="Also open the link in this machine's web browser.")]


def register(app: typer.Typer) -> None:
    app.command("ui")(ui)


def ui(open_browser: OpenOption = False, profile: ProfileOption = None, json_output: JsonOption = False) -> None:
    """Print a one-time sign-in link (single use, valid for minutes) for the Ray dashboard and the console.

    Whoever opens the link first is signed in as you: open it yourself, never share it.

    Sessions end at sign-out, after an idle timeout or their absolute lifetime, or when you are disabled.
    """
    from raywarden.client.profile import load_profile
    from raywarden.client.renew import ensure_fresh

    chosen = load_profile(profile)
    ensure_fresh(chosen)
    answer = _request_link(
        chosen.gateway_url.rstrip("/"), str(chosen.ca_path), (str(chosen.cert_path), str(chosen.key_path))
    )
    url = chosen.gateway_url.rstrip("/") + str(answer["path"])
    if json_output:
        print_json(
            {
                "url": url,
                "identity": answer.get("identity"),
                "expires_at": answer.get("expires_at"),
                "code_id": answer.get("code_id"),
            }
        )
    else:
        err_console.print(f"One-time sign-in link for {answer.get('identity')} (expires {answer.get('expires_at')}):")
        console.print(url, soft_wrap=True)
        err_console.print(f"Your browser must trust the cluster's access CA: {chosen.ca_path}")
    if open_browser:
        webbrowser.open(url)


def _request_link(gateway: str, ca: str, cert: tuple[str, str]) -> dict[str, Any]:
    """``POST /raywarden/v1/signin-link`` with the profile's client certificate, verified against its CA."""
    import requests

    try:
        resp = requests.post(f"{gateway}/raywarden/v1/signin-link", json={}, verify=ca, cert=cert, timeout=30)
    except requests.exceptions.SSLError as exc:
        raise PKIError(
            f"TLS with the gateway failed: {exc}",
            hint="the gateway's certificate does not match the profile's CA or the URL's host",
        ) from None
    except requests.RequestException as exc:
        raise ConfigError(f"cannot reach the gateway: {type(exc).__name__}", hint="is the cluster up?") from None
    try:
        data = resp.json()
    except ValueError:
        data = {}
    if resp.status_code != 200 or not isinstance(data, dict) or not isinstance(data.get("path"), str):
        from raywarden.client.answers import refusal

        if isinstance(data, dict) and data:
            raise refusal(resp.status_code, data)
        raise GatewayRequestError(resp.status_code, f"gateway answered {resp.status_code}: {resp.reason}")
    return data

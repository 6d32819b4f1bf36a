"""Ray Serve deploys through the gateway, as a profile's identity (docs/serve.md, "Deploying")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests
import yaml

from raywarden.client.answers import refusal
from raywarden.client.profile import Profile
from raywarden.errors import ConfigError, GatewayRequestError, PKIError, UsageError

APPS = "/raywarden/v1/serve/applications"
TIMEOUT_S = 120.0  # a deploy returns once Ray has accepted the config, not once it runs
MAX_CONFIG_BYTES = 1024 * 1024


def read_config(path: Path, groups: list[str]) -> dict[str, Any]:
    """A Serve config file (YAML or JSON, as `serve build` writes it), with ``groups`` as every application's
    invoker groups unless its own ``raywarden`` block names them."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if len(text) > MAX_CONFIG_BYTES:
        raise UsageError(f"{path} is larger than 1 MiB", hint="a Serve config holds settings, not code or data")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("applications"), list):
        raise UsageError(f"{path} has no `applications` list", hint="write it as `serve build` does (docs/serve.md)")
    if groups:
        block = data.setdefault("raywarden", {}).setdefault("apps", {})
        for app in data["applications"]:
            if isinstance(app, dict):
                block.setdefault(str(app.get("name", "default")), {"invoke_groups": list(groups)})
    return data


def call(profile: Profile, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One request to the gateway's API listener with the profile's client certificate; its JSON answer."""
    try:
        resp = requests.request(
            method,
            profile.gateway_url + path,
            json=body,
            verify=str(profile.ca_path),
            cert=(str(profile.cert_path), str(profile.key_path)),
            timeout=TIMEOUT_S,
        )
    except requests.exceptions.SSLError as exc:
        raise PKIError(f"TLS with the gateway failed: {exc}", hint="`raywarden whoami --check` says why") from None
    except requests.RequestException as exc:
        raise ConfigError(f"cannot reach the gateway: {type(exc).__name__}", hint="is the cluster up?") from None
    try:
        data = resp.json()
    except ValueError:
        data = None
    if resp.status_code != 200:
        if isinstance(data, dict) and data:
            raise refusal(resp.status_code, data)
        detail = resp.text.strip()[:300] or resp.reason  # Ray's own refusal of a config is plain text
        raise GatewayRequestError(resp.status_code, f"gateway answered {resp.status_code}: {detail}")
    return data

"""Ray's own JobSubmissionClient, made to present the profile's client certificate to the gateway.

Reusing Ray's client keeps `raywarden job` identical to `ray job` in what it sends (working_dir packaging,
upload, log tail), so the gateway sees exactly the requests stock Ray tools make.
"""

from __future__ import annotations

import json
import os
from typing import Any

import requests
from ray.exceptions import AuthenticationError as RayAuthenticationError
from ray.job_submission import JobSubmissionClient

from raywarden.client.profile import Profile, load_profile
from raywarden.client.renew import ensure_fresh
from raywarden.errors import ClusterError, GatewayRequestError, UsageError


class GatewayJobClient(JobSubmissionClient):
    def __init__(self, profile: Profile) -> None:
        self._client_cert = (str(profile.cert_path), str(profile.key_path))
        try:
            super().__init__(profile.gateway_url, verify=str(profile.ca_path))
        except (requests.ConnectionError, ConnectionError) as exc:
            raise ClusterError(
                f"cannot reach the gateway at {profile.gateway_url}: {type(exc).__name__}",
                hint="is the cluster up? see `raywarden status`",
            ) from None
        except RuntimeError as exc:
            raise _as_gateway_error(str(exc)) from None
        # The log tail's WebSocket uses this context: present the same certificate there.
        self._ssl_context.load_cert_chain(*self._client_cert)

    def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("cert", self._client_cert)
        kwargs.setdefault("timeout", 300)
        try:
            response: requests.Response = super()._do_request(method, endpoint, **kwargs)
        except RayAuthenticationError as exc:  # Ray's client raises on 401/403 before we see the response
            raise _refused(str(exc)) from None
        if response.status_code in (401, 403, 413, 503) or (
            response.status_code in (400, 404)
            and response.headers.get("x-raywarden-gateway") == "1"
            and response.headers.get("content-type", "").startswith("application/json")
            and "error" in response.text
        ):
            raise gateway_error(response)
        return response


def gateway_error(response: requests.Response) -> GatewayRequestError:
    try:
        body = response.json()
        message, hint = str(body.get("error", response.text)), body.get("hint")
        if body.get("request_id"):
            message += f" (request {body['request_id']})"
    except (ValueError, AttributeError):
        message, hint = response.text.strip()[:500] or response.reason, None
    return GatewayRequestError(response.status_code, f"gateway answered {response.status_code}: {message}", hint=hint)


def _refused(text: str) -> GatewayRequestError:
    """Rebuild the gateway's 401/403 answer from the text of Ray's AuthenticationError ("...: BODY\n\n...")."""
    status = 401 if text.startswith("Authentication required") else 403
    body = text.partition(": ")[2].partition("\n\n")[0]
    try:
        data = json.loads(body)
        message, hint = str(data.get("error", body)), data.get("hint")
    except (ValueError, AttributeError):
        message, hint = body[:500], None
    return GatewayRequestError(status, f"gateway answered {status}: {message}", hint=hint)


def _as_gateway_error(text: str) -> GatewayRequestError:
    return GatewayRequestError(0, text.strip()[:500])


# Ray's client lets these override the address it is given, and adds Ray's token to every request when it
# finds one: either would send requests or Ray's token somewhere other than our gateway.
_RAY_CLIENT_ENV = (
    "RAY_ADDRESS",
    "RAY_API_SERVER_ADDRESS",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
    "RAY_JOB_HEADERS",
)


def connect(profile_name: str | None = None) -> GatewayJobClient:
    for name in _RAY_CLIENT_ENV:
        os.environ.pop(name, None)
    profile = load_profile(profile_name)
    ensure_fresh(profile)
    return GatewayJobClient(profile)


def parse_runtime_env(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"--runtime-env-json is not valid JSON: {exc}",
            hint='for example --runtime-env-json \'{"pip": ["requests"]}\'',
        ) from None
    if not isinstance(value, dict):
        raise UsageError("--runtime-env-json must be a JSON object")
    return value

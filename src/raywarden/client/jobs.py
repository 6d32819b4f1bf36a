"""Ray's own JobSubmissionClient, pointed at the gateway with a profile's credentials.

Reusing Ray's client keeps `raywarden job` identical to `ray job` in what it sends (working_dir packaging,
upload, log tail), so the gateway sees exactly the requests stock Ray tools make. It is configured only
through its public constructor (``headers``, ``verify``), as stock `ray job --headers --verify` is; the
errors it raises are turned back into the gateway's own answer (message, hint, request id).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

import requests
from ray.exceptions import AuthenticationError as RayAuthenticationError
from ray.job_submission import JobSubmissionClient

from raywarden.client.answers import json_object, refusal
from raywarden.client.bearer import bearer_token, forget_token
from raywarden.client.profile import Profile, current_profile_name, list_profiles, load_profile
from raywarden.client.renew import ensure_fresh
from raywarden.errors import ClusterError, GatewayRequestError, PKIError, UsageError

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


def choose_profile(profile_name: str | None, address: str | None) -> Profile:
    """The profile to use. ``--address`` (as scripts written for `ray job` pass it) must be the gateway of
    that profile; without --profile it picks the current profile if that one matches, else the only match."""
    if address is None or profile_name is not None:
        profile = load_profile(profile_name)
        if address is not None and _norm(address) != _norm(profile.gateway_url):
            raise UsageError(
                f"--address {address} is not the gateway of profile {profile.name!r} ({profile.gateway_url})",
                hint="drop --address (raywarden uses the profile's gateway), or pick the profile for that gateway",
            )
        return profile
    matches = [p for p in list_profiles() if _norm(p.gateway_url) == _norm(address)]
    current = current_profile_name() if not os.environ.get("RAYWARDEN_PROFILE") else os.environ["RAYWARDEN_PROFILE"]
    for candidate in matches:
        if candidate.name == current:
            return candidate
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UsageError(
            f"no profile on this machine is for --address {address}",
            hint="log in to that gateway first (`raywarden login URL --code CODE --ca-fingerprint SHA256`)",
        )
    raise UsageError(
        f"{len(matches)} profiles are for {address}: {', '.join(p.name for p in matches)}",
        hint="pick one with --profile NAME",
    )


def _norm(url: str) -> str:
    url = url.strip().rstrip("/").lower()
    return url if "://" in url else "https://" + url


def connect(profile_name: str | None = None, address: str | None = None) -> tuple[Profile, JobSubmissionClient]:
    for name in _RAY_CLIENT_ENV:
        os.environ.pop(name, None)
    profile = choose_profile(profile_name, address)
    ensure_fresh(profile)
    return profile, open_client(profile)


def open_client(profile: Profile) -> JobSubmissionClient:
    """A client with the profile's bearer token; a cached token the gateway no longer accepts is replaced once."""
    try:
        return _client(profile, fresh=False)
    except GatewayRequestError as exc:
        if exc.status != 401:
            raise
    forget_token(profile)
    return _client(profile, fresh=True)


def _client(profile: Profile, *, fresh: bool) -> JobSubmissionClient:
    token = bearer_token(profile, fresh=fresh)
    with gateway_errors(profile.gateway_url):
        return JobSubmissionClient(
            profile.gateway_url,
            headers={"Authorization": f"Bearer {token.reveal()}"},
            verify=str(profile.ca_path),
        )


@contextlib.contextmanager
def gateway_errors(gateway: str) -> Iterator[None]:
    """Turn what Ray's client raises into one raywarden error carrying the gateway's own words."""
    try:
        yield
    except requests.exceptions.SSLError as exc:
        raise PKIError(
            f"TLS with the gateway at {gateway} failed: {type(exc).__name__}",
            hint="the gateway's certificate does not match the profile's CA or the URL's host",
        ) from None
    except (requests.ConnectionError, ConnectionError) as exc:
        raise ClusterError(
            f"cannot reach the gateway at {gateway}: {type(exc).__name__}",
            hint="is the cluster up? see `raywarden status` on the head",
        ) from None
    except requests.HTTPError as exc:  # Ray's version check calls raise_for_status() (a 503 while Ray is down)
        response = exc.response
        status = response.status_code if response is not None else 0
        body = json_object(response.text) if response is not None else None
        if body is not None:
            raise refusal(status, body) from None
        raise GatewayRequestError(
            status, f"gateway answered {status}: {response.reason if response else exc}"
        ) from None
    except RayAuthenticationError as exc:
        raise from_ray_text(str(exc), 401 if str(exc).startswith("Authentication required") else 403) from None
    except RuntimeError as exc:
        error = from_ray_text(str(exc), None)
        if error.status == 0:
            raise GatewayRequestError(0, " ".join(str(exc).split())[:800]) from None
        raise error from None


_STATUS_RE = re.compile(r"status code (\d{3})")


def from_ray_text(text: str, status: int | None) -> GatewayRequestError:
    """Rebuild the answer from the text of Ray's exception.

    Ray's client puts the response body in its exception text: ``Authentication failed: BODY\\n\\n<Ray's
    advice about its own token>`` for 401/403, ``Request failed with status code N: BODY.`` otherwise.
    Ray's advice does not apply to the gateway and is dropped.
    """
    if status is None:
        found = _STATUS_RE.search(text)
        status = int(found.group(1)) if found else 0
    body = text.partition(": ")[2]
    if "\n\n" in body:
        body = body.partition("\n\n")[0]
    body = body.strip()
    data = json_object(body)
    if data is None:
        return GatewayRequestError(status, f"Ray answered {status}: {body.removesuffix('.')[:800]}")
    return refusal(status, data)


def status_code(exc: BaseException) -> int | None:
    """The HTTP status of a WebSocket handshake that the gateway refused (aiohttp raises it)."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None

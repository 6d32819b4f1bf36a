"""A short-lived bearer token for a profile, so that Ray's own client can talk to the gateway.

`raywarden job` hands Ray's ``JobSubmissionClient`` the same two things stock `ray job` takes
(``headers={"Authorization": "Bearer ..."}`` and ``verify=CA``), through Ray's public API only. The token is
minted by the gateway over mutual TLS with the profile's certificate, kept in the profile folder (0600) and
reused until a few minutes before it expires.
"""

from __future__ import annotations

import datetime as dt
import json

from raywarden.client.enroll import request_token
from raywarden.client.profile import Profile
from raywarden.files import write_private
from raywarden.secret import Secret

# A cached token is used only while it has at least this long to live (a `job submit` tails logs on one
# WebSocket opened at the start, and opens a fresh client for the final status).
REUSE_MARGIN = dt.timedelta(minutes=5)


def bearer_token(profile: Profile, *, fresh: bool = False) -> Secret:
    if not fresh:
        cached = _cached(profile)
        if cached is not None:
            return cached
    answer = request_token(profile, None)
    token = str(answer["token"])
    record = {"token": token, "jti": answer.get("jti"), "expires_at": answer.get("expires_at")}
    write_private(profile.token_cache_path, (json.dumps(record) + "\n").encode())
    return Secret(token)


def cached_token_id(profile: Profile) -> str | None:
    """The id (jti) of the cached token, for revoking it at logout."""
    try:
        jti = json.loads(profile.token_cache_path.read_text()).get("jti")
    except (OSError, ValueError, AttributeError):
        return None
    return str(jti) if jti else None


def forget_token(profile: Profile) -> None:
    profile.token_cache_path.unlink(missing_ok=True)


def _cached(profile: Profile) -> Secret | None:
    try:
        record = json.loads(profile.token_cache_path.read_text())
        expires = dt.datetime.fromisoformat(str(record["expires_at"]))
        token = str(record["token"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if expires.tzinfo is None or expires - dt.datetime.now(dt.timezone.utc) < REUSE_MARGIN:
        return None
    return Secret(token)

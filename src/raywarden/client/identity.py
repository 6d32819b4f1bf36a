"""Who a profile is: its certificate, its groups, whether the gateway accepts it, and logging it out.

``whoami`` asks the gateway (``GET /raywarden/v1/whoami``) who it takes the profile's certificate for: identity,
groups and until when the certificate is accepted, decided as for any request. Offline, or when the gateway does
not answer, groups are read from the cluster's identity store if it is on this machine (the head), and are not
known elsewhere. ``logout`` asks the gateway to revoke the certificate (``POST /raywarden/v1/logout``, with the
cached token's id), falls back to the identity store when it is on this machine, and deletes the profile.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from raywarden.client.answers import json_object
from raywarden.client.bearer import cached_token_id, forget_token
from raywarden.client.profile import Profile, delete_profile
from raywarden.errors import RaywardenError
from raywarden.pki.certs import fingerprint, load_cert, remaining, serial_hex
from raywarden.state import StateDir, default_state_dir

CHECK_TIMEOUT_S = 10.0
WHOAMI_PATH = "/raywarden/v1/whoami"
LOGOUT_PATH = "/raywarden/v1/logout"


def local_cluster(profile: Profile) -> StateDir | None:
    """The state dir of the profile's cluster if it is on this machine (same access CA), else None."""
    candidates = [Path(profile.state_dir)] if profile.state_dir else []
    candidates.append(default_state_dir())
    try:
        own = fingerprint(load_cert(profile.ca_path))
    except (RaywardenError, OSError, ValueError):
        return None
    for root in candidates:
        state = StateDir(root.expanduser().absolute())
        try:
            if state.exists() and fingerprint(load_cert(state.access_ca_cert)) == own:
                return state
        except (RaywardenError, OSError, ValueError):
            continue
    return None


@dataclass(frozen=True)
class Whoami:
    profile: Profile
    current: bool
    serial: str
    not_after: dt.datetime
    groups: list[str] | None  # None: not known (the gateway did not say, and the store is not on this machine)
    disabled: bool | None
    gateway_check: str  # "accepted", "refused (401 ...)", "unreachable: ...", "not checked"
    # What the gateway answered to whoami (its view of this identity), when it accepted the certificate.
    gateway_view: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        left = remaining_seconds(self.not_after)
        return {
            "profile": self.profile.name,
            "current": self.current,
            "identity": self.profile.identity,
            "gateway_url": self.profile.gateway_url,
            "groups": self.groups,
            "groups_known": self.groups is not None,
            "disabled": self.disabled,
            "certificate_serial": self.serial,
            "certificate_not_after": self.not_after.isoformat(),
            "certificate_seconds_left": left,
            "gateway_check": self.gateway_check,
            "gateway_view": self.gateway_view,
        }


def remaining_seconds(not_after: dt.datetime) -> int:
    return int((not_after - dt.datetime.now(dt.timezone.utc)).total_seconds())


def whoami(profile: Profile, *, current: bool, check: bool) -> Whoami:
    cert = profile.certificate()
    verdict, view = gateway_whoami(profile) if check else ("not checked", None)
    groups: list[str] | None = None
    disabled: bool | None = None
    if view is not None and isinstance(view.get("groups"), list):
        groups, disabled = [str(g) for g in view["groups"]], False
    else:
        groups, disabled = _stored_groups(profile)
    return Whoami(profile, current, serial_hex(cert), cert.not_valid_after_utc, groups, disabled, verdict, view)


def _stored_groups(profile: Profile) -> tuple[list[str] | None, bool | None]:
    state = local_cluster(profile)
    if state is None:
        return None, None
    from raywarden.identity.store import IdentityStore

    try:
        principal = IdentityStore.open(state.identity_db).get(profile.identity)
    except (RaywardenError, OSError):  # an unreadable store leaves the groups unknown
        return None, None
    return (list(principal.groups), principal.disabled) if principal is not None else (None, None)


def _call(profile: Profile, method: str, path: str, body: dict[str, Any] | None = None) -> requests.Response:
    return requests.request(
        method,
        profile.gateway_url + path,
        json=body,
        verify=str(profile.ca_path),
        cert=(str(profile.cert_path), str(profile.key_path)),
        timeout=CHECK_TIMEOUT_S,
        allow_redirects=False,
    )


def _said(resp: requests.Response) -> str:
    """The gateway's reason (or error) for a refusal, as one short clause."""
    body = json_object(resp.text) or {}
    text = body.get("reason") or body.get("error")
    return f": {str(text)[:300]}" if text else ""


def gateway_whoami(profile: Profile) -> tuple[str, dict[str, Any] | None]:
    """Present the certificate to the gateway's whoami: a verdict, and the gateway's view when it accepted."""
    if remaining(profile.certificate()).total_seconds() <= 0:
        return "not checked: the certificate has expired", None
    try:
        resp = _call(profile, "GET", WHOAMI_PATH)
    except requests.exceptions.SSLError:
        return "refused at TLS (the gateway does not accept this certificate, or its own does not match the CA)", None
    except requests.RequestException as exc:
        return f"unreachable ({type(exc).__name__})", None
    if resp.status_code == 200:
        view = json_object(resp.text)
        if view is not None and view.get("identity") == profile.identity:
            return "accepted", view
        return f"accepted, but as {str((view or {}).get('identity'))[:200]}, not {profile.identity}", view
    if resp.status_code == 401:
        return f"refused (401){_said(resp) or ': the certificate is revoked, or the identity disabled'}", None
    return f"answered {resp.status_code}{_said(resp)}", None


@dataclass(frozen=True)
class Logout:
    profile: Profile
    was_current: bool
    serial: str
    not_after: dt.datetime
    revoked: bool  # the certificate (and the cached token) were revoked, by the gateway or in the local store
    note: str
    revoked_by: str | None = None  # "gateway" or "identity store"

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile.name,
            "identity": self.profile.identity,
            "was_current": self.was_current,
            "certificate_serial": self.serial,
            "certificate_not_after": self.not_after.isoformat(),
            "revoked": self.revoked,
            "revoked_by": self.revoked_by,
            "note": self.note,
        }


def logout(profile: Profile) -> Logout:
    """Revoke the profile's certificate (and cached token) through the gateway, or in the identity store when it
    is on this machine and the gateway did not; then delete the key, certificate and token here."""
    try:
        cert = profile.certificate()
        serial, not_after = serial_hex(cert), cert.not_valid_after_utc
    except (RaywardenError, OSError, ValueError):
        serial, not_after = "", dt.datetime.now(dt.timezone.utc)
    jti = cached_token_id(profile)
    revoked, note, by = False, "", None
    if serial:
        revoked, note = _revoke_at_gateway(profile, serial, not_after, jti)
        by = "gateway" if revoked else None
        state = None if revoked else local_cluster(profile)
        if state is not None:
            revoked, note = _revoke_locally(state, serial, jti)
            by = "identity store" if revoked else None
    forget_token(profile)
    was_current = delete_profile(profile)
    return Logout(profile, was_current, serial, not_after, revoked, note, by)


def _revoke_at_gateway(profile: Profile, serial: str, not_after: dt.datetime, jti: str | None) -> tuple[bool, str]:
    if not_after <= dt.datetime.now(dt.timezone.utc):
        return False, f"certificate {serial} had already expired; the gateway refuses it"
    try:
        resp = _call(profile, "POST", LOGOUT_PATH, {"jti": jti} if jti else {})
    except requests.RequestException as exc:
        why = f"the gateway was unreachable ({type(exc).__name__})"
    else:
        if resp.status_code == 200:
            return True, f"certificate {serial} is revoked: the gateway refuses it from the next request"
        if resp.status_code == 401:
            return False, f"the gateway already refuses certificate {serial}{_said(resp)}"
        why = f"the gateway answered {resp.status_code}{_said(resp)}"
    return False, (
        f"{why}, so it still accepts certificate {serial} until {not_after:%Y-%m-%d %H:%M} UTC unless an "
        f"administrator revokes it: `raywarden revoke cert {serial}` on the head"
    )


def _revoke_locally(state: StateDir, serial: str, jti: str | None) -> tuple[bool, str]:
    from raywarden.identity.admin import IdentityAdmin
    from raywarden.identity.store import IdentityError

    try:
        admin = IdentityAdmin(state)
    except (RaywardenError, OSError) as exc:
        return False, f"could not revoke certificate {serial} here ({exc}); an administrator can"
    try:
        admin.revoke_cert(serial, "logout")
    except IdentityError as exc:
        return False, f"certificate {serial}: {exc.message}"
    if jti:
        try:
            admin.revoke_token(jti, "logout")
        except IdentityError:
            pass  # expired tokens are pruned; one already revoked is fine
    return True, f"certificate {serial} is revoked: the gateway refuses it from the next request"

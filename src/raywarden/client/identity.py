"""Who a profile is: its certificate, its groups, whether the gateway accepts it, and logging it out.

Groups live in the cluster's identity store. When that store is on this machine (the head, for its admin or
anyone sharing the machine's state dir) they are read from it; elsewhere they are not known to the client.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from raywarden.client.bearer import cached_token_id, forget_token
from raywarden.client.profile import Profile, delete_profile
from raywarden.errors import RaywardenError
from raywarden.pki.certs import fingerprint, load_cert, remaining, serial_hex
from raywarden.state import StateDir, default_state_dir

CHECK_TIMEOUT_S = 10.0


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
    groups: list[str] | None  # None: not known on this machine
    disabled: bool | None
    gateway_check: str  # "accepted", "refused (401 ...)", "unreachable: ...", "not checked"

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
        }


def remaining_seconds(not_after: dt.datetime) -> int:
    return int((not_after - dt.datetime.now(dt.timezone.utc)).total_seconds())


def whoami(profile: Profile, *, current: bool, check: bool) -> Whoami:
    cert = profile.certificate()
    groups: list[str] | None = None
    disabled: bool | None = None
    state = local_cluster(profile)
    if state is not None:
        from raywarden.identity.store import IdentityStore

        try:
            principal = IdentityStore.open(state.identity_db).get(profile.identity)
        except (RaywardenError, OSError):  # an unreadable store leaves the groups unknown
            principal = None
        if principal is not None:
            groups, disabled = list(principal.groups), principal.disabled
    verdict = gateway_check(profile) if check else "not checked"
    return Whoami(profile, current, serial_hex(cert), cert.not_valid_after_utc, groups, disabled, verdict)


def gateway_check(profile: Profile) -> str:
    """Present the certificate to the gateway (``GET /api/version``) and say whether it was accepted."""
    if remaining(profile.certificate()).total_seconds() <= 0:
        return "not checked: the certificate has expired"
    try:
        resp = requests.get(
            profile.gateway_url + "/api/version",
            verify=str(profile.ca_path),
            cert=(str(profile.cert_path), str(profile.key_path)),
            timeout=CHECK_TIMEOUT_S,
        )
    except requests.exceptions.SSLError:
        return "refused at TLS (the gateway does not accept this certificate, or its own does not match the CA)"
    except requests.RequestException as exc:
        return f"unreachable ({type(exc).__name__})"
    if resp.status_code == 200:
        return "accepted"
    if resp.status_code == 401:
        return "refused (401): the certificate is revoked, or the identity disabled"
    return f"answered {resp.status_code}: authenticated, but this identity may not read the cluster version"


@dataclass(frozen=True)
class Logout:
    profile: Profile
    was_current: bool
    serial: str
    not_after: dt.datetime
    revoked: bool  # the certificate (and the cached token) were revoked in the local identity store
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile.name,
            "identity": self.profile.identity,
            "was_current": self.was_current,
            "certificate_serial": self.serial,
            "certificate_not_after": self.not_after.isoformat(),
            "revoked": self.revoked,
            "note": self.note,
        }


def logout(profile: Profile) -> Logout:
    """Delete the profile's key, certificate and token here; revoke them when the cluster is on this machine."""
    try:
        cert = profile.certificate()
        serial, not_after = serial_hex(cert), cert.not_valid_after_utc
    except (RaywardenError, OSError, ValueError):
        serial, not_after = "", dt.datetime.now(dt.timezone.utc)
    jti = cached_token_id(profile)
    state = local_cluster(profile)
    revoked, note = False, ""
    if state is not None and serial:
        revoked, note = _revoke_locally(state, serial, jti)
    elif serial:
        note = (
            f"the gateway still accepts certificate {serial} until {not_after:%Y-%m-%d %H:%M} UTC unless an "
            f"administrator revokes it: `raywarden revoke cert {serial}` on the head"
        )
    forget_token(profile)
    was_current = delete_profile(profile)
    return Logout(profile, was_current, serial, not_after, revoked, note)


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

"""Keep a profile's certificate fresh: renewed once half its lifetime has passed, under the profile's lock so
that commands started together renew it once.

The local admin profile created by `init` renews directly with the access CA in the state dir (whoever
can read that key can mint certificates anyway). Profiles enrolled with `login` renew through the gateway's
``/raywarden/v1/renew``, authenticated by the certificate they are replacing. A service account that an
administrator made renewable renews an expired certificate within its grace through
``/raywarden/v1/renew/expired``, by proving possession of the expired certificate's key. Each command also
checks that the gateway's certificate still verifies, and learns a rotated access CA through the CA it pins.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import sys
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509

from raywarden.audit.cluster import open_cluster_audit
from raywarden.client.profile import Profile, list_profiles
from raywarden.errors import ConfigError, GatewayRequestError, PKIError, RaywardenError
from raywarden.identity.store import IdentityStore
from raywarden.pki.certs import cert_pem, lifetime, remaining, serial_hex
from raywarden.pki.keys import generate_private_key, private_key_pem
from raywarden.pki.spiffe import SpiffeId
from raywarden.pki.trust import CaFiles
from raywarden.state import StateDir

PROBE_TIMEOUT_S = 10.0


def needs_renewal(profile: Profile, now: dt.datetime | None = None) -> bool:
    """Half of the certificate's lifetime has passed (so a 12 h certificate renews after 6 h)."""
    cert = profile.certificate()
    return remaining(cert, now) < lifetime(cert) / 2


def ensure_fresh(profile: Profile) -> bool:
    """Renew if due and possible. Returns True when a new certificate was written.

    A valid certificate whose renewal fails is kept (with a warning on stderr); an expired one that cannot be
    renewed raises an error that says why and what to do.
    """
    if profile.state_dir is not None:
        refresh_local_trust(profile)
    else:
        check_gateway_trust(profile)
    if not needs_renewal(profile):
        return False
    with profile.lock():
        # Another command may have renewed while we waited for the lock: decide on what is on disk now.
        if not needs_renewal(profile):
            return False
        if profile.state_dir is not None:
            renew_locally(profile, StateDir(Path(profile.state_dir)).require())
            return True
        return _renew_remote(profile)


def _renew_remote(profile: Profile) -> bool:
    from raywarden.client.enroll import renew_expired, renew_remote

    cert = profile.certificate()
    left = remaining(cert)
    if left.total_seconds() > 0:
        try:
            renew_remote(profile)
        except RaywardenError as exc:
            # Still valid: this command goes on with it; a later one tries again.
            print(
                f"warning: could not renew the certificate of profile {profile.name!r} (valid for "
                f"{_human(left)} more): {exc.message}",
                file=sys.stderr,
            )
            if exc.hint:  # e.g. a certificate renewed already, whose answer was lost: how to go on
                print(f"hint: {exc.hint}", file=sys.stderr)
            return False
        return True
    spiffe = SpiffeId.parse(profile.identity)
    if spiffe.kind != "sa":
        raise ConfigError(
            f"the certificate of profile {profile.name!r} ({spiffe}) expired {_human(-left)} ago, and a person's "
            "certificate cannot be renewed once it has expired",
            hint=f"ask your administrator for a new code (`raywarden user code {spiffe.name}`), then "
            f"`raywarden login {profile.gateway_url} --code CODE --ca-fingerprint SHA256 --profile {profile.name}`; "
            "any command renews it automatically while it is valid",
        )
    try:
        renew_expired(profile)
    except GatewayRequestError as exc:
        raise ConfigError(
            f"the certificate of service account {spiffe.name} (profile {profile.name!r}) expired {_human(-left)} "
            f"ago and could not be renewed: {exc.message}",
            hint=exc.hint
            or f"ask an administrator for a new code (`raywarden sa code {spiffe.name}`) and log in again",
        ) from None
    return True


def renew_locally(profile: Profile, state: StateDir) -> x509.Certificate:
    """Issue with the access CA in this machine's state dir (the `init` admin's profile)."""
    config = state.load_config()
    access = CaFiles(state, "access").load_current(config.trust_domain)
    spiffe = SpiffeId.parse(profile.identity)
    store = IdentityStore.open(state.identity_db)
    principal = store.get(str(spiffe))
    if principal is None or principal.disabled:
        raise ConfigError(f"{spiffe} is disabled or unknown; its certificate is not renewed")
    key = generate_private_key()
    cert = access.issue(key.public_key(), spiffe, lifetime=config.user_cert_ttl)
    store.record_certificate(serial_hex(cert), str(spiffe), cert.not_valid_after_utc, issuer=access.fingerprint)
    previous = serial_hex(profile.certificate())
    profile.replace_certificate(key_pem=private_key_pem(key), cert_pem=cert_pem(cert))
    with open_cluster_audit(state, config) as audit:
        audit.append(
            {
                "kind": "identity",
                "event": "cert.renew",
                "principal": str(spiffe),
                "previous_serial": previous,
                "serial": serial_hex(cert),
                "not_after": cert.not_valid_after_utc.isoformat(),
                "actor": str(spiffe),
            }
        )
    return cert


def refresh_local_trust(profile: Profile) -> bool:
    """A profile of a cluster on this machine trusts what its state dir trusts (current, then previous CA)."""
    root = Path(profile.state_dir or "")
    state = StateDir(root)
    if not state.exists():
        return False
    trusted = CaFiles(state, "access").trusted()
    if [cert_pem(c) for c in trusted] == [cert_pem(c) for c in profile.trusted_cas()]:
        return False
    profile.replace_cas(trusted)
    return True


def refresh_local_profiles(state: StateDir) -> list[str]:
    """After a CA rotation step: every profile of this cluster on this machine trusts what the state dir trusts,
    and one holding a certificate from a CA no longer trusted gets a new one. Returns the profiles changed."""
    changed = []
    trusted = CaFiles(state, "access").trusted()
    for profile in list_profiles():
        if profile.state_dir is None or Path(profile.state_dir).resolve() != state.root.resolve():
            continue
        with profile.lock():
            updated = refresh_local_trust(profile)
            cert = profile.certificate()
            if not any(_issued_by(cert, ca) for ca in trusted):
                renew_locally(profile, state)
                updated = True
        if updated:
            changed.append(profile.name)
    return changed


def check_gateway_trust(profile: Profile) -> bool:
    """One TLS handshake with the profile's CA file. When the gateway's certificate no longer verifies (its
    access CA was rotated), learn the new CA through the one pinned here. Returns True when the CA file changed.
    Unreachable gateways are left to the command itself to report."""
    from raywarden.client.enroll import refresh_trust

    parts = urlsplit(profile.gateway_url)
    host, port = parts.hostname or "", parts.port or 443
    ctx = ssl.create_default_context(cafile=str(profile.ca_path))
    try:
        with (
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as raw,
            ctx.wrap_socket(raw, server_hostname=host),
        ):
            return False
    except ssl.SSLCertVerificationError:
        pass
    except (OSError, ValueError):
        return False
    try:
        return refresh_trust(profile)
    except (ConfigError, PKIError) as exc:
        raise PKIError(
            f"the gateway at {profile.gateway_url} presents a certificate that the CA of profile "
            f"{profile.name!r} does not verify, and no rollover from that CA leads to it: {exc.message}",
            hint=exc.hint
            or "if the cluster's CA was replaced, log in again with the fingerprint from your administrator",
        ) from None


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    from raywarden.pki.rotation import issued_by

    return issued_by(cert, ca)


def _human(delta: dt.timedelta) -> str:
    seconds = int(abs(delta.total_seconds()))
    if seconds >= 2 * 86400:
        return f"{seconds // 86400} days"
    if seconds >= 2 * 3600:
        return f"{seconds // 3600} hours"
    if seconds >= 120:
        return f"{seconds // 60} minutes"
    return f"{seconds} seconds"

"""Keep a profile's certificate fresh. Renews when less than a third of its lifetime is left.

The local admin profile created by `init` renews directly with the access CA in the state dir (whoever
can read that key can mint certificates anyway). Profiles enrolled with `login` renew through the gateway's
``/raywarden/v1/renew``, authenticated by the certificate they are replacing.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from raywarden.audit.cluster import open_cluster_audit
from raywarden.client.profile import Profile
from raywarden.errors import ConfigError
from raywarden.identity.store import IdentityStore
from raywarden.pki.ca_keys import CertificateAuthority
from raywarden.pki.certs import cert_pem, lifetime, remaining, serial_hex
from raywarden.pki.keys import generate_private_key, private_key_pem
from raywarden.pki.spiffe import SpiffeId
from raywarden.state import StateDir


def needs_renewal(profile: Profile, now: dt.datetime | None = None) -> bool:
    cert = profile.certificate()
    return remaining(cert, now) < lifetime(cert) / 3


def ensure_fresh(profile: Profile) -> bool:
    """Renew if due and possible. Returns True when a new certificate was written."""
    if not needs_renewal(profile):
        return False
    if profile.state_dir is None:
        if remaining(profile.certificate()).total_seconds() <= 0:
            raise ConfigError(
                f"the certificate of profile {profile.name!r} has expired",
                hint="ask your administrator for a new code and log in again with `raywarden login`",
            )
        from raywarden.client.enroll import renew_remote

        renew_remote(profile)
        return True
    state = StateDir(Path(profile.state_dir)).require()
    config = state.load_config()
    access = CertificateAuthority.load("access", config.trust_domain, state.access_ca_cert, state.access_ca_key)
    spiffe = SpiffeId.parse(profile.identity)
    store = IdentityStore.open(state.identity_db)
    principal = store.get(str(spiffe))
    if principal is None or principal.disabled:
        raise ConfigError(f"{spiffe} is disabled or unknown; its certificate is not renewed")
    key = generate_private_key()
    cert = access.issue(key.public_key(), spiffe, lifetime=config.user_cert_ttl)
    store.record_certificate(serial_hex(cert), str(spiffe), cert.not_valid_after_utc)
    profile.replace_certificate(key_pem=private_key_pem(key), cert_pem=cert_pem(cert))
    audit = open_cluster_audit(state, config)
    try:
        audit.append(
            {
                "kind": "identity",
                "event": "cert.renew",
                "principal": str(spiffe),
                "serial": serial_hex(cert),
                "not_after": cert.not_valid_after_utc.isoformat(),
                "actor": str(spiffe),
            }
        )
    finally:
        audit.close()
    return True

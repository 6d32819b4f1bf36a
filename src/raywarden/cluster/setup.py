"""`raywarden init`: create a cluster's state dir (two CAs, Ray token, gateway and node certificates,
audit key, identity store) and the admin's client profile."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from raywarden.audit.cluster import open_cluster_audit
from raywarden.client.profile import Profile, load_profile, profiles_dir, set_current
from raywarden.cluster import pkilock
from raywarden.cluster.certlife import Lifetime
from raywarden.cluster.rayuser import DEFAULT_RAY_USER, can_switch_users
from raywarden.config import ClusterConfig
from raywarden.errors import ConfigError
from raywarden.files import ensure_private_dir, write_private, write_public
from raywarden.identity.store import IdentityStore
from raywarden.pki.ca_keys import CertificateAuthority
from raywarden.pki.certs import cert_pem, fingerprint, load_cert, serial_hex
from raywarden.pki.keys import generate_private_key, private_key_pem
from raywarden.pki.spiffe import SpiffeId, check_name
from raywarden.pki.trust import gateway_issuer
from raywarden.state import StateDir

ADMIN_GROUP = "admins"


@dataclass(frozen=True)
class InitResult:
    state_dir: str
    trust_domain: str
    gateway_url: str
    profile: str
    admin: str
    access_ca_fingerprint: str
    internal_ca_fingerprint: str


def gateway_url(config: ClusterConfig) -> str:
    return f"https://{config.listen.url_host()}:{config.listen.port}"


def init_state(state: StateDir, config: ClusterConfig, *, admin_name: str, profile_name: str) -> InitResult:
    check_name(admin_name, "admin name")
    check_name(profile_name, "profile name")
    if state.exists():
        raise ConfigError(
            f"{state.root} already holds a raywarden cluster",
            hint="use another --state-dir, or `raywarden down` and remove it to start over",
        )
    if (profiles_dir() / profile_name / "profile.json").exists():
        existing = load_profile(profile_name)
        raise ConfigError(
            f"profile {profile_name!r} already exists (for {existing.gateway_url})",
            hint="pass --profile NAME to name this cluster's admin profile differently",
        )
    if config.ray_user is None and can_switch_users():
        # As root, `up` will run Ray as a user of its own (created then): recorded now, so that people and
        # service accounts can be added before the first `up`.
        config = config.model_copy(update={"ray_user": DEFAULT_RAY_USER})
    for folder in (
        state.root,
        state.pki_dir,
        state.keys_dir,
        state.audit_dir,
        state.run_dir,
        state.logs_dir,
        state.policy_dir,
    ):
        ensure_private_dir(folder)

    td = config.trust_domain
    access = CertificateAuthority.create("access", td, years=config.ca_years)
    internal = CertificateAuthority.create("internal", td, years=config.ca_years)
    access.save(state.access_ca_cert, state.access_ca_key)
    internal.save(state.internal_ca_cert, state.internal_ca_key)

    issue_gateway_certificate(state, config, access)
    issue_head_node_certificate(state, config, internal)
    write_private(state.ray_token, secrets.token_hex(32).encode() + b"\n")

    audit = open_cluster_audit(state, config)
    try:
        store = IdentityStore.create(state.identity_db)
        admin = SpiffeId(td, "user", admin_name)
        store.add_principal(admin, [ADMIN_GROUP], created_by="raywarden init")
        audit.append(
            {
                "kind": "cluster",
                "event": "init",
                "trust_domain": td,
                "actor": "raywarden init",
                "access_ca_fingerprint": fingerprint(access.certificate),
                "internal_ca_fingerprint": fingerprint(internal.certificate),
            }
        )
        audit.append(
            {
                "kind": "identity",
                "event": "user.create",
                "principal": str(admin),
                "groups": [ADMIN_GROUP],
                "actor": "raywarden init",
            }
        )
        url = gateway_url(config)
        profile = Profile(profile_name, url, str(admin), str(state.root))
        key = generate_private_key()
        cert = access.issue(key.public_key(), admin, lifetime=config.user_cert_ttl)
        store.record_certificate(serial_hex(cert), str(admin), cert.not_valid_after_utc)
        profile.save(
            key_pem=private_key_pem(key),
            cert_pem=cert_pem(cert),
            ca_pem=access.certificate.public_bytes(serialization.Encoding.PEM),
        )
        audit.append(
            {
                "kind": "identity",
                "event": "cert.issue",
                "principal": str(admin),
                "serial": serial_hex(cert),
                "not_after": cert.not_valid_after_utc.isoformat(),
                "actor": "raywarden init",
            }
        )
        set_current(profile_name)
        state.save_config(config)  # written last: a state dir with a config is a complete one
    finally:
        audit.close()
    return InitResult(
        str(state.root),
        td,
        url,
        profile_name,
        str(admin),
        fingerprint(access.certificate),
        fingerprint(internal.certificate),
    )


def issue_gateway_certificate(state: StateDir, config: ClusterConfig, access: CertificateAuthority) -> x509.Certificate:
    """A new key and certificate for the gateway, written together under the renewal lock: a running gateway
    picks them up for its next connections (gateway/tls.py)."""
    with pkilock.holding(state.renewal_lock):
        return write_gateway_certificate(state, config, access)


def renew_gateway_certificate_if_due(
    state: StateDir, now: dt.datetime | None = None
) -> tuple[str, x509.Certificate] | None:
    """A new gateway certificate if the current one is past 2/3 of its life, checked under the renewal lock so
    that concurrent callers (several gateway processes, `up`) renew once. Returns (old serial, new
    certificate), or None when it was not due."""
    with pkilock.holding(state.renewal_lock):
        current = load_cert(state.gateway_cert)
        if not Lifetime.of(current).due(now):
            return None
        config = state.load_config()
        return serial_hex(current), write_gateway_certificate(state, config, gateway_issuer(state, config.trust_domain))


def write_gateway_certificate(state: StateDir, config: ClusterConfig, access: CertificateAuthority) -> x509.Certificate:
    """As ``issue_gateway_certificate``, for a caller that already holds the renewal lock."""
    dns, ips = ["localhost"], ["127.0.0.1", "::1"]
    for host in [config.listen.host, *config.gateway_hosts]:
        if host in ("0.0.0.0", "::", "localhost"):  # noqa: S104 - wildcard listen is not a name
            continue
        (ips if _is_ip(host) else dns).append(host)
    key = generate_private_key()
    cert = access.issue(
        key.public_key(),
        SpiffeId(config.trust_domain, "gateway"),
        lifetime=config.gateway_cert_ttl,
        server=True,
        client=False,
        dns_names=tuple(dict.fromkeys(dns)),
        ip_addresses=tuple(dict.fromkeys(ips)),
    )
    write_private(state.gateway_key, private_key_pem(key))
    write_public(state.gateway_cert, cert_pem(cert))
    return cert


def issue_head_node_certificate(
    state: StateDir, config: ClusterConfig, internal: CertificateAuthority, node_ip: str | None = None
) -> x509.Certificate:
    """The head's Ray certificate, for ``head_cert_ttl``: the head's GCS and raylet read it once, when they
    start, and live as long as the cluster, so it is renewed by restarting the head's Ray
    (`raywarden up`, `raywarden cert rotate --head`; docs/credentials.md)."""
    # Ray's gRPC clients check the server certificate against the address they dial: 127.0.0.1 on a
    # single node, the node IP in multi-node mode (workers dial the head's GCS and raylet there).
    ips = ("127.0.0.1",) if node_ip is None else ("127.0.0.1", node_ip)
    key = generate_private_key()
    cert = internal.issue(
        key.public_key(),
        SpiffeId(config.trust_domain, "node", "head"),
        lifetime=config.head_cert_ttl,
        server=True,
        client=True,
        dns_names=("localhost",),
        ip_addresses=ips,
    )
    with pkilock.holding(state.renewal_lock):
        write_private(state.node_key, private_key_pem(key))
        write_public(state.node_cert, cert_pem(cert))
    return cert


def reissue_head_certificate(state: StateDir, config: ClusterConfig, node_ip: str | None = None) -> x509.Certificate:
    """A new head certificate from the internal CA's current files, before the head's Ray starts: Ray reads
    it once, and it must outlive that start (docs/credentials.md)."""
    internal = CertificateAuthority.load("internal", config.trust_domain, state.internal_ca_cert, state.internal_ca_key)
    return issue_head_node_certificate(state, config, internal, node_ip=node_ip)


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True

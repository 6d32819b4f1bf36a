"""Authentication: turn the caller's credential into an identity, or refuse with a precise reason.

Credentials: a client certificate verified by the TLS layer against the access CA.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from raywarden.errors import AuthenticationError, PKIError
from raywarden.identity.store import IdentityStore
from raywarden.pki.certs import serial_hex, spiffe_id_of


@dataclass(frozen=True)
class Identity:
    spiffe_id: str
    kind: str  # "user" or "sa"
    name: str
    groups: tuple[str, ...]
    auth_method: str  # "certificate", ...
    credential_id: str  # certificate serial, ...


class MissingCredential(AuthenticationError):
    """The request carried no credential at all (as opposed to a bad one)."""


class Authenticator:
    def __init__(self, trust_domain: str, store: IdentityStore) -> None:
        self.trust_domain = trust_domain
        self.store = store

    def authenticate(self, peer_cert_der: bytes | None, authorization: str | None) -> Identity:
        """Raises MissingCredential or AuthenticationError (whose reason is for the audit log only)."""
        if peer_cert_der:
            return self.from_certificate(peer_cert_der)
        if authorization:
            raise AuthenticationError("bearer credentials are not accepted by this gateway")
        raise MissingCredential("no client certificate")

    def from_certificate(self, der: bytes) -> Identity:
        """The TLS layer already checked the chain to the access CA and the validity window."""
        try:
            cert = x509.load_der_x509_certificate(der)
            spiffe = spiffe_id_of(cert)
        except (ValueError, PKIError) as exc:
            raise AuthenticationError(f"unusable client certificate: {exc}") from None
        if spiffe.trust_domain != self.trust_domain:
            raise AuthenticationError(f"certificate for foreign trust domain {spiffe.trust_domain}")
        if spiffe.kind not in ("user", "sa"):
            # The gateway's own certificate shares the access CA; it never speaks for a person.
            raise AuthenticationError(f"{spiffe.kind} certificates do not authenticate callers")
        serial = serial_hex(cert)
        if self.store.is_revoked(serial):
            raise AuthenticationError(f"certificate {serial} is revoked or was never issued")
        principal = self.store.get(str(spiffe))
        if principal is None:
            raise AuthenticationError(f"unknown principal {spiffe}")
        if principal.disabled:
            raise AuthenticationError(f"principal {spiffe} is disabled")
        return Identity(str(spiffe), spiffe.kind, spiffe.name, principal.groups, "certificate", serial)

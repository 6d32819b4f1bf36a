"""Authentication: turn a verified client certificate into an identity, or refuse with a precise reason."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from raywarden.errors import AuthenticationError, PKIError
from raywarden.identity.store import IdentityStore
from raywarden.pki.certs import serial_hex, spiffe_id_of


@dataclass(frozen=True)
class Identity:
    spiffe_id: str
    kind: str
    name: str
    groups: tuple[str, ...]
    auth_method: str
    credential_id: str


class Authenticator:
    def __init__(self, trust_domain: str, store: IdentityStore) -> None:
        self.trust_domain = trust_domain
        self.store = store

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

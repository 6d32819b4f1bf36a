"""Authentication: turn the caller's credential into an identity (its credential's age included), or refuse
with a precise reason.

Credentials, in order of precedence: a client certificate verified by the TLS layer against the access CA;
a bearer token signed by this cluster (gateway/tokens.py); an ID token from a configured OIDC issuer
(gateway/oidc.py); on dashboard and console routes only, a browser session cookie (identity/sessions.py).
The identity store is read on every request (no cache), so a disabled principal, a revoked certificate serial
or a revoked token id is refused on its next request, and so is a session they created.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509

from raywarden.errors import AuthenticationError, ConfigError, PKIError
from raywarden.gateway.oidc import OidcFederation, OidcIssuer, oidc_config_path
from raywarden.gateway.tokens import MAX_TOKEN_BYTES, TokenAuthority
from raywarden.identity.sessions import SessionRefused, SessionStore
from raywarden.identity.store import CredentialState, IdentityStore, Principal, lookup_credential
from raywarden.pki.certs import serial_hex, spiffe_id_of
from raywarden.pki.spiffe import SpiffeId
from raywarden.state import ClusterConfig, StateDir


@dataclass(frozen=True)
class Identity:
    spiffe_id: str
    kind: str  # "user" or "sa"
    name: str
    groups: tuple[str, ...]
    auth_method: str  # "certificate", "token", "oidc" or "session"
    credential_id: str  # certificate serial, token jti, "oidc:<jti>", or the session's ref
    # When the credential was issued (a certificate's notBefore, a token's iat, a session's sign-in), read from
    # the verified credential; policies see the time since as the credential's age. None: unknown (very old).
    issued_at: float | None = None


class MissingCredential(AuthenticationError):
    """The request carried no credential at all (as opposed to a bad one)."""


class Authenticator:
    def __init__(
        self,
        trust_domain: str,
        store: IdentityStore,
        *,
        tokens: TokenAuthority | None = None,
        oidc: OidcFederation | None = None,
        sessions: SessionStore | None = None,
    ) -> None:
        self.trust_domain = trust_domain
        self.store = store
        self.tokens = tokens
        self.oidc = oidc
        self.sessions = sessions

    @classmethod
    def from_state(cls, state: StateDir, config: ClusterConfig, store: IdentityStore) -> Authenticator:
        return cls(
            config.trust_domain,
            store,
            tokens=TokenAuthority.for_state(state, config),
            oidc=OidcFederation(oidc_config_path(state)),
            sessions=SessionStore(state.identity_db, store),
        )

    def authenticate(
        self, peer_cert_der: bytes | None, authorization: str | None, session: str | None = None
    ) -> Identity:
        """Raises MissingCredential or AuthenticationError (whose reason is for the audit log only).
        ``session`` is the session cookie's value, passed only on routes that accept sessions."""
        if peer_cert_der:
            return self.from_certificate(peer_cert_der)
        if authorization:
            return self.from_bearer(authorization)
        if session is not None and self.sessions is not None:
            return self.from_session(session)
        raise MissingCredential("no client certificate")

    def from_session(self, session: str) -> Identity:
        if self.sessions is None:
            raise MissingCredential("browser sessions are not enabled on this gateway")
        try:
            info = self.sessions.resolve(session)
        except SessionRefused as exc:
            raise AuthenticationError(exc.reason) from None
        return Identity(info.spiffe_id, info.kind, info.name, info.groups, "session", info.ref, info.created_at)

    def from_certificate(self, der: bytes) -> Identity:
        """The TLS layer already checked the chain to the access CA and the validity window."""
        try:
            cert = x509.load_der_x509_certificate(der)
            spiffe = spiffe_id_of(cert)
        except (ValueError, PKIError) as exc:
            raise AuthenticationError(f"unusable client certificate: {exc}") from None
        self._check_kind(spiffe, "certificate")
        serial = serial_hex(cert)
        found = lookup_credential(self.store, "certificates", serial)
        if found is None or found.revoked:
            raise AuthenticationError(f"certificate {serial} is revoked or was never issued")
        if found.spiffe_id != str(spiffe):
            raise AuthenticationError(f"certificate {serial} was issued to {found.spiffe_id}, not {spiffe}")
        principal = _active(found)
        issued = cert.not_valid_before_utc.timestamp()
        return Identity(str(spiffe), spiffe.kind, spiffe.name, principal.groups, "certificate", serial, issued)

    def from_bearer(self, authorization: str) -> Identity:
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError(f"unsupported authorization scheme {scheme[:20]!r}")
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthenticationError("Authorization value too large")
        try:
            header = jwt.get_unverified_header(token)
            unverified: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthenticationError("malformed Authorization value (not a JWT)") from None
        iss = unverified.get("iss")
        if self.tokens is not None and self.tokens.claims_issuer(header, iss):
            return self._from_own_token(self.tokens, token, header)
        if self.oidc is not None:
            try:
                issuer = self.oidc.issuer(iss)
            except ConfigError as exc:
                raise AuthenticationError(f"OIDC configuration unusable: {exc.message}") from None
            if issuer is not None:
                return self._from_id_token(self.oidc, token, header, issuer)
        raise AuthenticationError(
            f"token from unknown issuer {str(iss)[:100]!r} with unknown key id {str(header.get('kid'))[:64]!r}"
        )

    def _from_own_token(self, tokens: TokenAuthority, token: str, header: dict[str, Any]) -> Identity:
        claims = tokens.verify(token, header)
        try:
            spiffe = SpiffeId.parse(claims.subject)
        except PKIError:
            raise AuthenticationError("token subject is not a SPIFFE ID") from None
        self._check_kind(spiffe, "token")
        found = lookup_credential(self.store, "tokens", claims.jti)
        if found is None:
            raise AuthenticationError(f"token id {claims.jti[:64]} was never issued")
        if found.revoked:
            raise AuthenticationError(f"token id {claims.jti} is revoked")
        if found.spiffe_id != str(spiffe):
            raise AuthenticationError(f"token id {claims.jti} was issued to {found.spiffe_id}, not {spiffe}")
        principal = _active(found)
        return Identity(str(spiffe), spiffe.kind, spiffe.name, principal.groups, "token", claims.jti, claims.issued_at)

    def _from_id_token(self, oidc: OidcFederation, token: str, header: dict[str, Any], issuer: OidcIssuer) -> Identity:
        found = oidc.verify(token, header, issuer)
        spiffe = SpiffeId(self.trust_domain, "user", found.name)
        principal = self.store.get(str(spiffe))
        if principal is None and not found.allow_unregistered:
            raise AuthenticationError(
                f"{spiffe} (from {found.issuer}) is not registered and the issuer admits registered users only"
            )
        if principal is not None and principal.disabled:
            raise AuthenticationError(f"principal {spiffe} is disabled")
        groups = tuple(sorted(set(found.groups) | set(principal.groups if principal else ())))
        return Identity(str(spiffe), "user", found.name, groups, "oidc", found.credential_id, found.issued_at)

    def _check_kind(self, spiffe: SpiffeId, what: str) -> None:
        if spiffe.trust_domain != self.trust_domain:
            raise AuthenticationError(f"{what} for foreign trust domain {spiffe.trust_domain}")
        if spiffe.kind not in ("user", "sa"):
            # The gateway's own certificate shares the access CA; it never speaks for a person.
            raise AuthenticationError(f"{spiffe.kind} {what}s do not authenticate callers")


def _active(found: CredentialState) -> Principal:
    if found.principal is None:
        raise AuthenticationError(f"unknown principal {found.spiffe_id}")
    if found.principal.disabled:
        raise AuthenticationError(f"principal {found.spiffe_id} is disabled")
    return found.principal

"""Authentication: turn the caller's credential into an identity (its credential's age included), or refuse
with a precise reason.

Credentials, in order of precedence: a client certificate verified by the TLS layer against the access CA;
a bearer token signed by this cluster (gateway/tokens.py); an ID token from a configured OIDC issuer
(gateway/oidc.py, gateway/oidc_people.py); on dashboard and console routes only, a browser session cookie
(identity/sessions.py).
The identity store is consulted on every request, so a disabled principal, a revoked certificate serial or a
revoked token id is refused on its next request, and so is a session or a bearer token they created: its
answers are kept only while identity.db is unchanged, which SQLite tells on every request
(identity/lookups.py). A certificate's validity window is checked on every request too: TLS checks it only at
the handshake, and a kept-alive connection or a resumed TLS session (the server issues session tickets)
carries no new handshake. For the same reason its issuer is checked against the access CAs trusted now
(gateway/access_trust.py): a certificate from a CA that a finished rotation dropped is refused on its next
request. What never changes is parsed once: a certificate's DER bytes (cached by their exact value).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509

from raywarden.config import ClusterConfig
from raywarden.errors import AuthenticationError, ConfigError, PKIError
from raywarden.gateway.access_trust import AccessTrust
from raywarden.gateway.oidc import OidcFederation, OidcIssuer, oidc_config_path
from raywarden.gateway.oidc_people import admit
from raywarden.gateway.tokens import MAX_TOKEN_BYTES, TokenAuthority, TokenClaims
from raywarden.identity.lookups import CachedLookups
from raywarden.identity.sessions import SessionRefused, SessionStore
from raywarden.identity.store import CertificateRecord, CredentialState, IdentityStore, Principal
from raywarden.pki.certs import serial_hex, spiffe_id_of
from raywarden.pki.spiffe import SpiffeId
from raywarden.state import StateDir


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
    # When it stops being accepted (notAfter, exp, the session's absolute lifetime); None: not known.
    expires_at: float | None = None
    # A bearer token's minting certificate (its serial), whose revocation ends the token; None for the rest.
    minted_with: str | None = None


_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


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
        single_principal: StateDir | None = None,
        access_trust: AccessTrust | None = None,
    ) -> None:
        self.trust_domain = trust_domain
        self.store = store
        self.lookups = CachedLookups(store)
        self.tokens = tokens
        self.oidc = oidc
        self.sessions = sessions
        # The state dir of a cluster whose Ray shares the control plane's OS user: it admits one principal.
        self.single_principal = single_principal
        # The access CAs trusted now; None (offline tests of other checks only): the TLS layer's word is taken.
        self.access_trust = access_trust

    @classmethod
    def from_state(cls, state: StateDir, config: ClusterConfig, store: IdentityStore) -> Authenticator:
        return cls(
            config.trust_domain,
            store,
            tokens=TokenAuthority.for_state(state, config),
            oidc=OidcFederation(oidc_config_path(state)),
            sessions=SessionStore(state.identity_db, store),
            single_principal=None if config.admits_principals else state,
            access_trust=AccessTrust(state),
        )

    async def authenticate(
        self, peer_cert_der: bytes | None, authorization: str | None, session: str | None = None
    ) -> Identity:
        """Raises MissingCredential or AuthenticationError (whose reason is for the audit log only).
        ``session`` is the session cookie's value, passed only on routes that accept sessions. Asynchronous
        because an OIDC issuer's keys may have to be fetched (off the event loop's critical path)."""
        if peer_cert_der:
            return self.from_certificate(peer_cert_der)
        if authorization:
            return await self.from_bearer(authorization)
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
        return Identity(
            info.spiffe_id, info.kind, info.name, info.groups, "session", info.ref, info.created_at, info.expires_at
        )

    def from_certificate(self, der: bytes, now: float | None = None) -> Identity:
        """The TLS layer checked the chain to the access CA, and the validity window at the handshake; both
        are checked again here, for requests on a kept-alive connection or a resumed session."""
        spiffe, serial, issued, expires = _certificate_facts(der)
        self._check_kind(spiffe, "certificate")
        if self.access_trust is not None and self.access_trust.trusted_issuer(der) is None:
            raise AuthenticationError(
                f"certificate {serial} is not issued by an access CA trusted now (issuer {_certificate_issuer(der)}; "
                "presented on a connection or TLS session set up before its CA was dropped)",
                public="your client certificate is from an access CA this cluster no longer trusts; "
                "get a new one (`raywarden login` again) and reconnect",
            )
        moment = time.time() if now is None else now
        if moment > expires:
            at = _iso(expires)
            raise AuthenticationError(
                f"certificate {serial} expired at {at} (presented on a connection or TLS session set up before)",
                public=f"your client certificate expired at {at}; renew it (`raywarden login` again) and reconnect",
            )
        if moment < issued:
            raise AuthenticationError(f"certificate {serial} is not valid before {_iso(issued)}")
        found = self.lookups.credential("certificates", serial)
        if found is not None and found.revoked:
            raise AuthenticationError(
                f"certificate {serial} is revoked", public=f"your client certificate {serial} is revoked"
            )
        if found is None:
            raise AuthenticationError(f"certificate {serial} was never issued")
        if found.spiffe_id != str(spiffe):
            raise AuthenticationError(f"certificate {serial} was issued to {found.spiffe_id}, not {spiffe}")
        principal = _active(found)
        return Identity(str(spiffe), spiffe.kind, spiffe.name, principal.groups, "certificate", serial, issued, expires)

    async def from_bearer(self, authorization: str) -> Identity:
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError(f"unsupported authorization scheme {scheme[:20]!r}")
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthenticationError("Authorization value too large")
        if not _COMPACT_JWS.fullmatch(token):
            # One spelling per token: base64url without padding (RFC 7515), which a decoder would otherwise
            # accept with '=' added, each spelling costing a signature check and a remembered-token slot.
            raise AuthenticationError("malformed Authorization value (not a JWT in compact form)")
        if self.tokens is not None:
            known = self.tokens.recall(token)
            if known is not None:  # verified before, by its exact text; its expiry checked again just now
                return self._own_token_identity(known)
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
                return await self._from_id_token(self.oidc, token, header, issuer)
        raise AuthenticationError(
            f"token from unknown issuer {str(iss)[:100]!r} with unknown key id {str(header.get('kid'))[:64]!r}"
        )

    def _from_own_token(self, tokens: TokenAuthority, token: str, header: dict[str, Any]) -> Identity:
        return self._own_token_identity(tokens.verify(token, header))

    def _own_token_identity(self, claims: TokenClaims) -> Identity:
        """Who a verified token of ours speaks for, if its record, its holder and its minting certificate
        still allow it (read from identity.db on every request)."""
        try:
            spiffe = SpiffeId.parse(claims.subject)
        except PKIError:
            raise AuthenticationError("token subject is not a SPIFFE ID") from None
        self._check_kind(spiffe, "token")
        found = self.lookups.token(claims.jti, claims.cert_serial)
        if found is None:
            raise AuthenticationError(f"token id {claims.jti[:64]} was never issued")
        if found.credential.revoked:
            raise AuthenticationError(f"token id {claims.jti} is revoked", public="your bearer token is revoked")
        if found.credential.spiffe_id != str(spiffe):
            raise AuthenticationError(f"token id {claims.jti} was issued to {found.credential.spiffe_id}, not {spiffe}")
        if claims.cert_serial is not None:
            _check_minting_certificate(claims.jti, claims.cert_serial, found.certificate, str(spiffe))
        elif found.self_issued:
            # Minted with a certificate by a release whose tokens did not name it: revoking that certificate
            # could not stop it. The CLI replaces a refused cached token by itself.
            raise AuthenticationError(
                f"token id {claims.jti} was minted with a certificate it does not name (an older release)",
                public="your bearer token predates tokens bound to their certificate; "
                "get a new one with `raywarden token`",
            )
        principal = _active(found.credential)
        return Identity(
            str(spiffe),
            spiffe.kind,
            spiffe.name,
            principal.groups,
            "token",
            claims.jti,
            claims.issued_at,
            claims.expires_at,
            claims.cert_serial,
        )

    async def _from_id_token(
        self, oidc: OidcFederation, token: str, header: dict[str, Any], issuer: OidcIssuer
    ) -> Identity:
        found = await oidc.verify(token, header, issuer)
        person = admit(found, self.trust_domain, self.store, self.single_principal)
        return Identity(
            person.spiffe_id,
            "user",
            person.name,
            person.groups,
            "oidc",
            found.credential_id,
            found.issued_at,
            found.expires_at,
        )

    def _check_kind(self, spiffe: SpiffeId, what: str) -> None:
        if spiffe.trust_domain != self.trust_domain:
            raise AuthenticationError(f"{what} for foreign trust domain {spiffe.trust_domain}")
        if spiffe.kind not in ("user", "sa"):
            # The gateway's own certificate shares the access CA; it never speaks for a person.
            raise AuthenticationError(f"{spiffe.kind} {what}s do not authenticate callers")


@functools.lru_cache(maxsize=1024)
def _certificate_facts(der: bytes) -> tuple[SpiffeId, str, float, float]:
    """A client certificate's SPIFFE ID, serial and validity window. The TLS layer verified its chain at the
    handshake; these facts depend on its bytes alone, so they are parsed once per distinct certificate."""
    try:
        cert = x509.load_der_x509_certificate(der)
        spiffe = spiffe_id_of(cert)
    except (ValueError, PKIError) as exc:
        raise AuthenticationError(f"unusable client certificate: {exc}") from None
    return spiffe, serial_hex(cert), cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()


@functools.lru_cache(maxsize=64)
def _certificate_issuer(der: bytes) -> str:
    """The issuer's name, for the audit record of a refused certificate."""
    return x509.load_der_x509_certificate(der).issuer.rfc4514_string()


def _check_minting_certificate(jti: str, serial: str, cert: CertificateRecord | None, spiffe_id: str) -> None:
    """A token lives no longer than the certificate it was minted with, and dies when that is revoked."""
    if cert is None:
        raise AuthenticationError(f"token id {jti} names certificate {serial}, which this cluster never issued")
    if cert.spiffe_id != spiffe_id:
        raise AuthenticationError(f"token id {jti} names certificate {serial} of {cert.spiffe_id}, not {spiffe_id}")
    if cert.revoked:
        raise AuthenticationError(
            f"token id {jti} was minted with certificate {serial}, which is revoked",
            public=f"your bearer token was issued with client certificate {serial}, which is revoked",
        )
    if time.time() > cert.not_after:
        raise AuthenticationError(
            f"token id {jti} outlives certificate {serial} it was minted with (expired at {_iso(cert.not_after)})",
            public=f"your bearer token was issued with a client certificate that expired at {_iso(cert.not_after)}",
        )


def _active(found: CredentialState) -> Principal:
    if found.principal is None:
        raise AuthenticationError(f"unknown principal {found.spiffe_id}")
    if found.principal.disabled:
        raise AuthenticationError(f"principal {found.spiffe_id} is disabled", public="your identity is disabled")
    return found.principal


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat(timespec="seconds")

"""raywarden's own bearer tokens: EdDSA-signed JWTs, bound to this cluster, short-lived, revocable by id.

A token minted with a client certificate names it (the ``cert_serial`` claim) and ends no later than it: the
gateway refuses the token once that certificate is revoked (gateway/authn.py), so revoking a copied key's
certificate also stops the tokens minted with it. Tokens an administrator mints for a service account
(`raywarden sa token`) name no certificate; their ``jti`` is revoked on its own.

The signing key is an Ed25519 key in the state dir's keys/ folder (0600); its fingerprint is the ``kid``.
The algorithm is fixed here, never read from the token: ``alg: none``, HMAC (including HMAC keyed with the
public key) and every other algorithm are refused before any signature check.

A token that verified is remembered (by its exact text, a bounded number of them), so that a client sending
the same token on every request pays for one signature check: what was verified depends on the text and this
authority's key alone, except its expiry, which is checked again on every use. A token not yet valid is never
remembered, and a valid one stays valid until it expires. Revocation is not decided here (gateway/authn.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import secrets
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from raywarden.config import ClusterConfig
from raywarden.errors import AuthenticationError, ConfigError, UsageError
from raywarden.files import ensure_private_dir, read_private
from raywarden.pki.trust import cluster_id as first_access_ca
from raywarden.secret import Secret
from raywarden.state import StateDir

ALGORITHM = "EdDSA"
REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "nbf", "jti")
# The serial (lower-case hex) of the client certificate the token was minted with; absent for `sa token`.
CERT_CLAIM = "cert_serial"
MAX_SERIAL_HEX = 64
MAX_TOKEN_BYTES = 8192
# Verified tokens remembered per gateway process (gateway/authn.py asks ``recall`` before parsing a token).
MAX_REMEMBERED = 4096


def token_key_path(state: StateDir) -> Path:
    return state.keys_dir / "token-ed25519.key"


def load_or_create_token_key(path: Path) -> Ed25519PrivateKey:
    """Load the signing key, creating it on first use. Creation is exclusive (hard link of a complete temp
    file), so a gateway and a CLI starting at once never end up with two different keys."""
    if not path.exists():
        ensure_private_dir(path.parent)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".token-key.")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    key = serialization.load_pem_private_key(read_private(path), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key", hint="remove it; a new one is created on next use")
    return key


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def parse_ttl(text: str) -> float:
    """``90s``, ``15m``, ``1h``, ``2d`` (or plain seconds) as seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(value) * units[unit]
    except ValueError:
        raise UsageError(f"--ttl {text!r} is not a duration", hint="for example 15m, 1h or 900s") from None
    if not seconds > 0:
        raise UsageError(f"--ttl {text!r} must be positive")
    return seconds


@dataclass(frozen=True)
class MintingCertificate:
    """The client certificate a token is minted with: the token names it and ends no later than it."""

    serial: str
    not_after: float


@dataclass(frozen=True)
class IssuedToken:
    token: Secret
    jti: str
    subject: str
    expires_at: float
    cert_serial: str | None = None
    # The lifetime asked for was cut short at the minting certificate's expiry.
    capped_by_certificate: bool = False


@dataclass(frozen=True)
class TokenClaims:
    subject: str
    jti: str
    expires_at: float
    issued_at: float
    cert_serial: str | None = None


class TokenAuthority:
    """Issues and verifies this cluster's bearer tokens."""

    def __init__(
        self,
        key: Ed25519PrivateKey,
        *,
        cluster_id: str,
        trust_domain: str,
        leeway_s: float,
        default_ttl_s: float,
        max_ttl_s: float,
    ) -> None:
        self._key = key
        self._public = key.public_key()
        self.kid = key_id(self._public)
        self.issuer = f"raywarden:{trust_domain}:{cluster_id}"
        self.audience = f"raywarden-gateway:{cluster_id}"
        self.leeway_s = leeway_s
        self.default_ttl_s = default_ttl_s
        self.max_ttl_s = max_ttl_s
        self._verified: OrderedDict[str, TokenClaims] = OrderedDict()

    def __repr__(self) -> str:
        return f"TokenAuthority(kid={self.kid!r}, issuer={self.issuer!r})"

    @classmethod
    def for_state(cls, state: StateDir, config: ClusterConfig) -> TokenAuthority:
        # The first access CA's fingerprint identifies the cluster (trust domains can repeat between clusters);
        # it stays the same when the access CA is rotated, so tokens outlive a rotation (pki/trust.py).
        cluster_id = first_access_ca(state)[:32]
        return cls(
            load_or_create_token_key(token_key_path(state)),
            cluster_id=cluster_id,
            trust_domain=config.trust_domain,
            leeway_s=config.token_leeway_seconds,
            default_ttl_s=config.token_default_minutes * 60,
            max_ttl_s=config.token_max_minutes * 60,
        )

    def check_ttl(self, ttl_s: float | None) -> float:
        ttl = self.default_ttl_s if ttl_s is None else ttl_s
        if not 0 < ttl <= self.max_ttl_s:
            raise UsageError(
                f"token lifetime {ttl:.0f}s is outside 1s..{self.max_ttl_s:.0f}s",
                hint="the maximum is token_max_minutes in the cluster config",
            )
        return ttl

    def issue(
        self,
        subject: str,
        ttl_s: float | None = None,
        now: float | None = None,
        *,
        minted_with: MintingCertificate | None = None,
    ) -> IssuedToken:
        """A token for ``subject``; one ``minted_with`` a certificate names it and expires no later than it."""
        ttl = self.check_ttl(ttl_s)
        issued = int(time.time() if now is None else now)
        expires = issued + int(ttl)
        capped = False
        claims: dict[str, Any] = {"iss": self.issuer, "sub": subject, "aud": self.audience}
        if minted_with is not None:
            if int(minted_with.not_after) <= issued:
                raise UsageError(
                    f"certificate {minted_with.serial} expires before a token could be used",
                    hint="renew the certificate (`raywarden login` again), then ask for a token",
                )
            capped = int(minted_with.not_after) < expires
            expires = min(expires, int(minted_with.not_after))
            claims[CERT_CLAIM] = minted_with.serial
        jti = secrets.token_hex(16)
        claims.update({"iat": issued, "nbf": issued, "exp": expires, "jti": jti})
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self.kid, "typ": "JWT"})
        serial = None if minted_with is None else minted_with.serial
        return IssuedToken(Secret(token), jti, subject, float(expires), serial, capped)

    def claims_issuer(self, header: dict[str, Any], unverified_iss: object) -> bool:
        """Whether a token claims to be ours (by key id or issuer); such a token is verified here only."""
        return header.get("kid") == self.kid or unverified_iss == self.issuer

    def recall(self, token: str) -> TokenClaims | None:
        """The claims of ``token`` if this authority verified it before (None: verify it), its expiry checked
        now as PyJWT checks it; raises AuthenticationError once it expired."""
        claims = self._verified.get(token)
        if claims is None:
            return None
        if claims.expires_at <= time.time() - self.leeway_s:
            del self._verified[token]
            raise _expired(jwt.ExpiredSignatureError("Signature has expired"))
        self._verified.move_to_end(token)
        return claims

    def verify(self, token: str, header: dict[str, Any]) -> TokenClaims:
        """Raises AuthenticationError with the precise reason; returns the verified claims."""
        claims = self._verify(token, header)
        self._verified[token] = claims
        while len(self._verified) > MAX_REMEMBERED:
            self._verified.popitem(last=False)
        return claims

    def _verify(self, token: str, header: dict[str, Any]) -> TokenClaims:
        alg = header.get("alg")
        if alg != ALGORITHM:
            raise AuthenticationError(f"token algorithm {alg!r} refused (this cluster signs with {ALGORITHM} only)")
        if header.get("kid") != self.kid:
            raise AuthenticationError(f"unknown token key id {str(header.get('kid'))[:64]!r}")
        try:
            claims = jwt.decode(
                token,
                self._public,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": list(REQUIRED_CLAIMS), "strict_aud": True},
            )
        except jwt.ExpiredSignatureError as exc:
            raise _expired(exc) from None
        except jwt.PyJWTError as exc:
            raise AuthenticationError(jwt_failure(exc)) from None
        if not isinstance(claims.get("sub"), str) or not isinstance(claims.get("jti"), str):
            raise AuthenticationError("token sub and jti must be strings")
        if claims["exp"] - claims["iat"] > self.max_ttl_s + self.leeway_s:
            raise AuthenticationError("token lifetime exceeds the cluster's maximum")
        serial = claims.get(CERT_CLAIM)
        if serial is not None and not _is_serial(serial):
            raise AuthenticationError(f"token {CERT_CLAIM} claim is not a certificate serial")
        return TokenClaims(claims["sub"], claims["jti"], float(claims["exp"]), float(claims["iat"]), serial)


def _expired(exc: jwt.ExpiredSignatureError) -> AuthenticationError:
    return AuthenticationError(
        jwt_failure(exc), public="your bearer token has expired; get a new one with `raywarden token`"
    )


def _is_serial(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_SERIAL_HEX and all(c in "0123456789abcdef" for c in value)


def jwt_failure(exc: Exception) -> str:
    """A precise, audit-worthy reason for a PyJWT failure."""
    reasons: list[tuple[type[Exception], str]] = [
        (jwt.ExpiredSignatureError, "token expired"),
        (jwt.ImmatureSignatureError, "token not yet valid (nbf or iat in the future)"),
        (jwt.InvalidAudienceError, "token audience is not this cluster"),
        (jwt.InvalidIssuerError, "token issuer is wrong"),
        (jwt.InvalidSignatureError, "token signature does not verify (tampered or foreign key)"),
        (jwt.MissingRequiredClaimError, "token lacks a required claim"),
        (jwt.InvalidIssuedAtError, "token iat is invalid"),
        (jwt.InvalidAlgorithmError, "token algorithm refused"),
        (jwt.DecodeError, "malformed token"),
    ]
    for kind, text in reasons:
        if isinstance(exc, kind):
            return f"{text}: {exc}"[:300]
    return f"invalid token: {exc}"[:300]


def expires_iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat()

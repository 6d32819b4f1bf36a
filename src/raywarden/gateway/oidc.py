"""OIDC federation: ID tokens from operator-configured issuers accepted as bearer credentials.

Configuration lives in the state dir's ``oidc.json`` (re-read when it changes). For each issuer the gateway
keeps the issuer's JWKS in memory, refetches it when a token names an unknown ``kid`` (at most once per
``jwks_min_refresh_seconds``), and verifies signature, ``iss``, ``aud``, ``exp``, ``iat`` and ``nbf``.
The claim named by ``username_claim`` becomes the raywarden user name; groups come only through
``group_map`` (an IdP group nobody mapped grants nothing).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from raywarden.errors import AuthenticationError, ConfigError
from raywarden.gateway.tokens import jwt_failure
from raywarden.pki.spiffe import NAME_RE
from raywarden.state import StateDir

# Asymmetric algorithms only: an HMAC "secret" would be the issuer's public key (CVE-2016-10555 class).
ALLOWED_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"})


def oidc_config_path(state: StateDir) -> Path:
    return state.root / "oidc.json"


class OidcIssuer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    issuer: str
    audience: str
    jwks_url: str
    username_claim: str = "preferred_username"
    groups_claim: str | None = "groups"
    group_map: dict[str, list[str]] = Field(default_factory=dict)
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    # False: only people already added with `raywarden user add` may sign in through this issuer.
    allow_unregistered: bool = True

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        bad = set(value) - ALLOWED_ALGORITHMS
        if bad or not value:
            raise ValueError(f"algorithms must be a non-empty subset of {sorted(ALLOWED_ALGORITHMS)}, not {bad}")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _https_or_loopback(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme == "https":
            return value
        if parts.scheme == "http" and _is_loopback(parts.hostname or ""):
            return value  # a JWKS served on this host (tests, sidecars) cannot be tampered with in transit
        raise ValueError("jwks_url must be https:// (plain http only on loopback)")


class OidcConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    issuers: list[OidcIssuer] = Field(default_factory=list)
    jwks_min_refresh_seconds: float = Field(default=30.0, ge=0)
    jwks_timeout_seconds: float = Field(default=5.0, gt=0, le=30)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class OidcIdentity:
    issuer: str
    name: str
    groups: tuple[str, ...]
    credential_id: str
    allow_unregistered: bool
    issued_at: float | None = None


class _Jwks:
    """One issuer's key set, fetched lazily; refetch on unknown kid is rate-limited."""

    def __init__(self, issuer: OidcIssuer, min_refresh_s: float, timeout_s: float) -> None:
        self.issuer = issuer
        self.min_refresh_s = min_refresh_s
        self.timeout_s = timeout_s
        self.keys: dict[str, Any] = {}
        self.fetched_at: float | None = None
        self.fetches = 0
        self._lock = threading.Lock()

    def key(self, kid: str) -> Any:
        with self._lock:
            if kid in self.keys:
                return self.keys[kid]
            now = time.monotonic()
            if self.fetched_at is not None and now - self.fetched_at < self.min_refresh_s:
                raise AuthenticationError(
                    f"unknown key id {kid[:64]!r} for issuer {self.issuer.issuer} (JWKS refetch rate-limited)"
                )
            self._fetch(now)
            if kid not in self.keys:
                raise AuthenticationError(
                    f"unknown key id {kid[:64]!r} for issuer {self.issuer.issuer} (not in the refetched JWKS)"
                )
            return self.keys[kid]

    def _fetch(self, now: float) -> None:
        self.fetched_at = now  # a failed fetch counts too: a dead JWKS endpoint is not hammered
        self.fetches += 1
        try:
            resp = requests.get(self.issuer.jwks_url, timeout=self.timeout_s, allow_redirects=False)
            resp.raise_for_status()
            keyset = jwt.PyJWKSet.from_dict(resp.json())
        except (requests.RequestException, ValueError, jwt.PyJWKSetError) as exc:
            raise AuthenticationError(f"JWKS of {self.issuer.issuer} unavailable: {type(exc).__name__}") from None
        self.keys = {k.key_id: k for k in keyset.keys if k.key_id}


class OidcFederation:
    """Verifies ID tokens from the issuers in ``oidc.json``; picks up changes to the file by its mtime."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[float, int] | None = None
        self._config = OidcConfig()
        self._jwks: dict[str, _Jwks] = {}
        self._lock = threading.Lock()

    def _current(self) -> OidcConfig:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._config, self._jwks = None, OidcConfig(), {}
            return self._config
        stamp = (st.st_mtime, st.st_size)
        with self._lock:
            if stamp != self._stamp:
                config = load_oidc_config(self.path)
                self._jwks = {
                    i.issuer: _Jwks(i, config.jwks_min_refresh_seconds, config.jwks_timeout_seconds)
                    for i in config.issuers
                }
                self._config, self._stamp = config, stamp
            return self._config

    def issuer(self, iss: object) -> OidcIssuer | None:
        for candidate in self._current().issuers:
            if candidate.issuer == iss:
                return candidate
        return None

    def jwks(self, issuer: str) -> _Jwks:
        return self._jwks[issuer]

    def verify(self, token: str, header: dict[str, Any], issuer: OidcIssuer) -> OidcIdentity:
        alg = header.get("alg")
        if alg not in issuer.algorithms:
            raise AuthenticationError(f"ID token algorithm {alg!r} not accepted for issuer {issuer.issuer}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthenticationError("ID token has no key id")
        key = self.jwks(issuer.issuer).key(kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[str(alg)],
                audience=issuer.audience,
                issuer=issuer.issuer,
                leeway=30,
                options={"require": ["iss", "aud", "exp", "iat"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"ID token from {issuer.issuer}: {jwt_failure(exc)}") from None
        raw_name = claims.get(issuer.username_claim)
        if not isinstance(raw_name, str) or not NAME_RE.fullmatch(raw_name.lower()):
            raise AuthenticationError(f"ID token claim {issuer.username_claim!r} is missing or not a valid user name")
        groups: set[str] = set()
        values = claims.get(issuer.groups_claim) if issuer.groups_claim else None
        for value in [values] if isinstance(values, str) else values if isinstance(values, list) else []:
            groups.update(issuer.group_map.get(str(value), []))
        ident = claims.get("jti") if isinstance(claims.get("jti"), str) else hashlib.sha256(token.encode()).hexdigest()
        iat = claims.get("iat")  # required above, and checked by PyJWT to be a number
        return OidcIdentity(
            issuer.issuer,
            raw_name.lower(),
            tuple(sorted(groups)),
            f"oidc:{str(ident)[:64]}",
            issuer.allow_unregistered,
            float(iat) if isinstance(iat, int | float) else None,
        )


def load_oidc_config(path: Path) -> OidcConfig:
    try:
        return OidcConfig.model_validate(json.loads(path.read_text()))
    except (ValueError, ValidationError) as exc:
        raise ConfigError(f"{path} is invalid: {exc}", hint="fix the OIDC issuer configuration") from None

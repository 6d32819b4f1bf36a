"""OIDC federation: ID tokens from operator-configured issuers accepted as bearer credentials.

Configuration lives in the state dir's ``oidc.json`` (re-read when it changes). For each issuer the gateway
keeps the issuer's JWKS in memory, refetches it when a token names an unknown ``kid`` (at most once per
``jwks_min_refresh_seconds``, off the event loop, one fetch however many requests wait for it), and verifies
signature, ``iss``, ``aud``, ``exp``, ``iat`` and ``nbf``.
The claim named by ``username_claim`` names the person within the issuer's ``namespace``
(``spiffe://TD/oidc/NAMESPACE/NAME``), apart from local users and other issuers' people, unless the issuer
``merge_local_users`` (then it is the local user ``spiffe://TD/user/NAME``). Groups come only through
``group_map`` (an IdP group nobody mapped grants nothing).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raywarden.errors import AuthenticationError, ConfigError
from raywarden.gateway.tokens import jwt_failure
from raywarden.identity.names import OidcName
from raywarden.pki.spiffe import NAME_RE
from raywarden.state import StateDir

# Asymmetric algorithms only: an HMAC "secret" would be the issuer's public key (CVE-2016-10555 class).
ALLOWED_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"})
# A key set is a few keys; anything larger is not read (a misbehaving endpoint cannot fill the gateway's memory).
MAX_JWKS_BYTES = 512 * 1024
HINT_NAMESPACE = 'give each issuer its own "namespace" in oidc.json (letters, digits, ".", "-", "_")'


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
    # False: only people already added with `raywarden user add` may sign in through this issuer; they are local
    # users, so such an issuer must merge with them (merge_local_users).
    allow_unregistered: bool = True
    # The SPIFFE path segment of this issuer's people (spiffe://TD/oidc/NAMESPACE/NAME). Default: the issuer's
    # host, with its port when it has one.
    namespace: str = ""
    # True: NAME from this issuer is the local user NAME (spiffe://TD/user/NAME), its groups and its jobs, and
    # the same person as NAME from every other issuer that merges. Only for an issuer that vouches for exactly
    # the people the local names stand for.
    merge_local_users: bool = False

    @model_validator(mode="before")
    @classmethod
    def _default_namespace(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("namespace") and isinstance(data.get("issuer"), str):
            return {**data, "namespace": default_namespace(data["issuer"])}
        return data

    @field_validator("namespace")
    @classmethod
    def _segment(cls, value: str) -> str:
        if not NAME_RE.fullmatch(value):
            raise ValueError(f"namespace {value!r} is not a valid SPIFFE path segment; {HINT_NAMESPACE}")
        return value

    @model_validator(mode="after")
    def _registered_are_local(self) -> OidcIssuer:
        if not self.allow_unregistered and not self.merge_local_users:
            raise ValueError(
                f"issuer {self.issuer}: allow_unregistered false admits only users added with `raywarden user add`, "
                'which are local users: set "merge_local_users": true as well (that issuer then speaks for them), '
                "or allow_unregistered true to keep its people in a namespace of their own"
            )
        return self

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

    @model_validator(mode="after")
    def _namespaces_apart(self) -> OidcConfig:
        """Two issuers in one namespace would be one person per name: merging is never implicit."""
        seen: dict[str, str] = {}
        for issuer in self.issuers:
            if issuer.merge_local_users:
                continue
            other = seen.setdefault(issuer.namespace, issuer.issuer)
            if other != issuer.issuer:
                raise ValueError(
                    f"issuers {other} and {issuer.issuer} share the namespace {issuer.namespace!r}; {HINT_NAMESPACE}"
                )
        return self


def default_namespace(issuer: str) -> str:
    """The issuer's host (and port) as a SPIFFE path segment: ``https://idp.example:8443/x`` is ``idp.example-8443``."""
    try:
        parts = urlsplit(issuer)
        host, port = (parts.hostname or "").lower(), parts.port
    except ValueError:
        return ""
    segment = re.sub(r"[^a-z0-9._-]+", "-", host).strip("-._") + (f"-{port}" if port else "")
    return segment[:63] if NAME_RE.fullmatch(segment[:63]) else ""


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
    name: str  # the username claim, lowercased
    groups: tuple[str, ...]
    credential_id: str
    allow_unregistered: bool
    issued_at: float | None = None
    expires_at: float | None = None
    # The issuer's namespace, or None when the issuer merges its people with local users.
    namespace: str | None = None

    def spiffe_id(self, trust_domain: str) -> str:
        if self.namespace is None:
            return f"spiffe://{trust_domain}/user/{self.name}"
        return OidcName(trust_domain, self.namespace, self.name).spiffe_id

    @property
    def principal_name(self) -> str:
        """``principal.name`` in policies: NAME for a merged person, NAMESPACE/NAME otherwise."""
        return self.name if self.namespace is None else f"{self.namespace}/{self.name}"


class _Jwks:
    """One issuer's key set, fetched lazily. A token naming an unknown kid refetches it, at most once per
    ``min_refresh_s``; requests that arrive while a fetch is under way wait for that one fetch."""

    def __init__(self, issuer: OidcIssuer, min_refresh_s: float, timeout_s: float) -> None:
        self.issuer = issuer
        self.min_refresh_s = min_refresh_s
        self.timeout_s = timeout_s
        self.keys: dict[str, Any] = {}
        self.fetched_at: float | None = None
        self.fetches = 0
        self._inflight: asyncio.Future[None] | None = None

    async def key(self, kid: str) -> Any:
        if kid in self.keys:
            return self.keys[kid]
        # No await between the check and the start of a fetch: on one event loop, one request starts it.
        if self._inflight is None or self._inflight.done():
            now = time.monotonic()
            if self.fetched_at is not None and now - self.fetched_at < self.min_refresh_s:
                raise AuthenticationError(
                    f"unknown key id {kid[:64]!r} for issuer {self.issuer.issuer} (JWKS refetch rate-limited)"
                )
            self.fetched_at = now  # a failed fetch counts too: a dead JWKS endpoint is not hammered
            self.fetches += 1
            self._inflight = asyncio.ensure_future(self._fetch())
            # A fetch whose every waiter went away still has its failure read, so none is reported as lost.
            self._inflight.add_done_callback(lambda done: done.cancelled() or done.exception())
        # Shielded: a client that hangs up does not cancel the fetch the others wait for.
        await asyncio.shield(self._inflight)
        if kid not in self.keys:
            raise AuthenticationError(
                f"unknown key id {kid[:64]!r} for issuer {self.issuer.issuer} (not in the refetched JWKS)"
            )
        return self.keys[kid]

    async def _fetch(self) -> None:
        unavailable = f"JWKS of {self.issuer.issuer} unavailable"
        try:
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.get(self.issuer.jwks_url, allow_redirects=False) as resp:
                    if resp.status != 200:
                        raise AuthenticationError(f"{unavailable}: HTTP {resp.status}")
                    body = await resp.content.read(MAX_JWKS_BYTES + 1)
            if len(body) > MAX_JWKS_BYTES:
                raise AuthenticationError(f"{unavailable}: larger than {MAX_JWKS_BYTES} bytes")
            keyset = jwt.PyJWKSet.from_dict(json.loads(body))
        except (
            aiohttp.ClientError,
            asyncio.TimeoutError,
            TimeoutError,
            ValueError,
            TypeError,
            AttributeError,
            RecursionError,
            jwt.PyJWTError,
        ) as exc:
            raise AuthenticationError(f"{unavailable}: {type(exc).__name__}") from None
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
        found = self._jwks.get(issuer)
        if found is None:  # the issuer left oidc.json between reading the token and verifying it
            raise AuthenticationError(f"issuer {issuer} is no longer configured")
        return found

    async def verify(self, token: str, header: dict[str, Any], issuer: OidcIssuer) -> OidcIdentity:
        alg = header.get("alg")
        if alg not in issuer.algorithms:
            raise AuthenticationError(f"ID token algorithm {alg!r} not accepted for issuer {issuer.issuer}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthenticationError("ID token has no key id")
        key = await self.jwks(issuer.issuer).key(kid)
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
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationError(
                f"ID token from {issuer.issuer}: {jwt_failure(exc)}",
                public=f"the ID token from {issuer.issuer} has expired",
            ) from None
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
        iat, exp = claims.get("iat"), claims.get("exp")  # required above, and checked by PyJWT to be numbers
        return OidcIdentity(
            issuer.issuer,
            raw_name.lower(),
            tuple(sorted(groups)),
            f"oidc:{str(ident)[:64]}",
            issuer.allow_unregistered,
            float(iat) if isinstance(iat, int | float) else None,
            float(exp) if isinstance(exp, int | float) else None,
            None if issuer.merge_local_users else issuer.namespace,
        )


def load_oidc_config(path: Path) -> OidcConfig:
    try:
        return OidcConfig.model_validate(json.loads(path.read_text()))
    except (ValueError, ValidationError) as exc:
        raise ConfigError(f"{path} is invalid: {exc}", hint="fix the OIDC issuer configuration") from None

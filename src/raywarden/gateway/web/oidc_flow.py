"""Browser sign-in through an OIDC issuer: the authorization-code flow with PKCE (S256), state and nonce.

The issuers are those of ``oidc.json`` (gateway/oidc.py); the client id is the issuer's ``audience`` (the
``aud`` of its ID tokens), as a public client: no client secret is stored. Endpoints come from the issuer's
discovery document. The ID token is verified by the same code as bearer ID tokens (signature against the
JWKS, iss, aud, exp, iat), plus the nonce of this flow. The flow is bound to the browser that began it by a
cookie, so a callback URL sent to someone else signs nobody in (login CSRF).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import jwt
import requests

from raywarden.errors import AuthenticationError, RaywardenError
from raywarden.gateway.oidc import OidcFederation, OidcIdentity, OidcIssuer
from raywarden.identity.sessions import OidcFlow
from raywarden.secret import Secret

BINDING_COOKIE = "__Host-raywarden-oidc"
TIMEOUT_S = 10.0


class OidcFlowError(RaywardenError):
    """The flow cannot go on. ``reason`` is for the audit log only."""

    def __init__(self, reason: str) -> None:
        super().__init__("single sign-on did not complete")
        self.reason = reason


@dataclass(frozen=True)
class Endpoints:
    authorization: str
    token: str


def _https_or_loopback(url: object) -> str:
    if not isinstance(url, str):
        raise OidcFlowError("discovery document without the endpoint")
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https" or (parts.scheme == "http" and host in ("127.0.0.1", "localhost", "::1")):
        return url
    raise OidcFlowError(f"OIDC endpoint {url[:100]!r} is neither https nor loopback")


def discover(issuer: OidcIssuer) -> Endpoints:
    url = _https_or_loopback(issuer.issuer.rstrip("/") + "/.well-known/openid-configuration")
    try:
        resp = requests.get(url, timeout=TIMEOUT_S, allow_redirects=False)
        resp.raise_for_status()
        doc = resp.json()
    except (requests.RequestException, ValueError) as exc:
        raise OidcFlowError(f"discovery of {issuer.issuer} failed: {type(exc).__name__}") from None
    if not isinstance(doc, dict) or doc.get("issuer") != issuer.issuer:
        raise OidcFlowError("discovery document names another issuer")
    return Endpoints(
        _https_or_loopback(doc.get("authorization_endpoint")), _https_or_loopback(doc.get("token_endpoint"))
    )


def challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def authorization_url(issuer: OidcIssuer, endpoints: Endpoints, flow: OidcFlow) -> str:
    query = {
        "response_type": "code",
        "client_id": issuer.audience,
        "redirect_uri": flow.redirect_uri,
        "scope": "openid profile email" + (" groups" if issuer.groups_claim == "groups" else ""),
        "state": flow.state,
        "nonce": flow.nonce,
        "code_challenge": challenge(flow.verifier),
        "code_challenge_method": "S256",
    }
    separator = "&" if urlsplit(endpoints.authorization).query else "?"
    return endpoints.authorization + separator + urlencode(query)


def _exchange(issuer: OidcIssuer, flow: OidcFlow, code: str) -> str:
    endpoints = discover(issuer)
    try:
        resp = requests.post(
            endpoints.token,
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": flow.redirect_uri,
                "client_id": issuer.audience,
                "code_verifier": flow.verifier,
            },
            timeout=TIMEOUT_S,
            allow_redirects=False,
        )
        answer = resp.json()
    except (requests.RequestException, ValueError) as exc:
        raise OidcFlowError(f"token endpoint of {issuer.issuer} failed: {type(exc).__name__}") from None
    token = answer.get("id_token") if isinstance(answer, dict) else None
    if resp.status_code != 200 or not isinstance(token, str):
        raise OidcFlowError(f"token endpoint of {issuer.issuer} answered {resp.status_code} without an ID token")
    return token


async def redeem(federation: OidcFederation, issuer: OidcIssuer, flow: OidcFlow, code: str) -> OidcIdentity:
    """Exchange the code (with the PKCE verifier) and verify the ID token and its nonce."""
    token = await asyncio.to_thread(_exchange, issuer, flow, code)
    current = federation.issuer(issuer.issuer)  # also loads the federation's JWKS cache for this issuer
    if current is None:
        raise OidcFlowError(f"issuer {issuer.issuer} is no longer configured")
    try:
        header: dict[str, Any] = jwt.get_unverified_header(token)
        found = await federation.verify(token, header, current)
        # The signature was verified just above; this reads the nonce of the same token.
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except (AuthenticationError, jwt.PyJWTError) as exc:
        raise OidcFlowError(f"ID token refused: {getattr(exc, 'reason', None) or exc}") from None
    nonce = claims.get("nonce")
    if not isinstance(nonce, str) or not Secret(flow.nonce).matches(nonce):
        raise OidcFlowError("ID token nonce does not match this flow (replayed or injected token)")
    return found


def binding_cookie(value: str, max_age_s: int = 600) -> str:
    # Lax, not Strict: the callback is a top-level navigation coming back from the issuer's site.
    return f"{BINDING_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age_s}"


def clear_binding_cookie() -> str:
    return f"{BINDING_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0"

"""A real local OIDC key server for tests: JWKS over HTTP on 127.0.0.1, keys the test generates."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


@dataclass
class Idp:
    issuer: str
    jwks_url: str
    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    published: set[str] = field(default_factory=set)
    hits: int = 0
    # Authorization-code flow (browser sign-in): codes handed out by /authorize, redeemed once at /token.
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    login_claims: dict[str, Any] = field(default_factory=dict)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    # The JWKS endpoint, misbehaving on demand: answering late, or with an error.
    jwks_delay_s: float = 0.0
    jwks_status: int = 200

    def add_key(self, kid: str, *, publish: bool = True) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if publish:
            self.published.add(kid)

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid in sorted(self.published):
            jwk = json.loads(RSAAlgorithm.to_jwk(self.keys[kid].public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": keys}

    def id_token(self, kid: str = "k1", *, audience: str = "raywarden", ttl: int = 300, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": self.issuer,
            "aud": audience,
            "iat": now,
            "exp": now + ttl,
            "sub": "idp-123",
            "preferred_username": "oidc-olga",
            "groups": ["eng"],
            **claims,
        }
        return jwt.encode(body, self.keys[kid], algorithm="RS256", headers={"kid": kid})

    def config(self, *, min_refresh_s: float = 30, **extra: Any) -> dict[str, Any]:
        return {
            "issuers": [
                {
                    "issuer": self.issuer,
                    "audience": "raywarden",
                    "jwks_url": self.jwks_url,
                    "username_claim": "preferred_username",
                    "groups_claim": "groups",
                    "group_map": {"eng": ["developers"]},
                    **extra,
                }
            ],
            "jwks_min_refresh_seconds": min_refresh_s,
        }

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": self.jwks_url,
            "code_challenge_methods_supported": ["S256"],
        }

    def authorize(self, query: dict[str, str]) -> str:
        """Approve at once (the user is "logged in" at the IdP): the redirect back to the client."""
        if query.get("response_type") != "code" or query.get("code_challenge_method") != "S256":
            raise ValueError("only the code flow with PKCE S256")
        code = secrets.token_urlsafe(16)
        self.codes[code] = {k: query[k] for k in ("client_id", "redirect_uri", "code_challenge", "nonce")}
        return f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query['state']})}"

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.token_requests.append(form)
        grant = self.codes.pop(form.get("code", ""), None)
        if grant is None or form.get("grant_type") != "authorization_code":
            return 400, {"error": "invalid_grant"}
        verifier = form.get("code_verifier", "")
        computed = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if (
            computed != grant["code_challenge"]
            or form.get("redirect_uri") != grant["redirect_uri"]
            or form.get("client_id") != grant["client_id"]
        ):
            return 400, {"error": "invalid_grant", "error_description": "PKCE or redirect_uri mismatch"}
        token = self.id_token(
            sorted(self.published)[0], audience=grant["client_id"], nonce=grant["nonce"], **self.login_claims
        )
        return 200, {"id_token": token, "token_type": "Bearer", "access_token": secrets.token_urlsafe(8)}


@contextmanager
def running_idp() -> Iterator[Idp]:
    holder: list[Idp] = []

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict[str, Any], location: str | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            if location:
                self.send_header("location", location)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            idp = holder[0]
            path, _, query = self.path.partition("?")
            if path == "/.well-known/openid-configuration":
                self._send(200, idp.discovery())
                return
            if path == "/authorize":
                try:
                    self._send(302, {}, idp.authorize({k: v[0] for k, v in parse_qs(query).items()}))
                except (KeyError, ValueError) as exc:
                    self._send(400, {"error": str(exc)})
                return
            if path != "/jwks":
                self.send_error(404)
                return
            idp.hits += 1
            time.sleep(idp.jwks_delay_s)
            self._send(idp.jwks_status, idp.jwks() if idp.jwks_status == 200 else {"error": "unavailable"})

        def do_POST(self) -> None:
            if self.path != "/token":
                self.send_error(404)
                return
            length = int(self.headers.get("content-length") or 0)
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            self._send(*holder[0].token(form))

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    holder.append(Idp(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/jwks"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()

"""A real local OIDC key server for tests: JWKS over HTTP on 127.0.0.1, keys the test generates."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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
        body = {"iss": self.issuer, "aud": audience, "iat": now, "exp": now + ttl, "sub": "idp-123",
                "preferred_username": "oidc-olga", "groups": ["eng"], **claims}
        return jwt.encode(body, self.keys[kid], algorithm="RS256", headers={"kid": kid})

    def config(self, *, min_refresh_s: float = 30, **extra: Any) -> dict[str, Any]:
        return {"issuers": [{"issuer": self.issuer, "audience": "raywarden", "jwks_url": self.jwks_url,
                             "username_claim": "preferred_username", "groups_claim": "groups",
                             "group_map": {"eng": ["developers"]}, **extra}],
                "jwks_min_refresh_seconds": min_refresh_s}


@contextmanager
def running_idp() -> Iterator[Idp]:
    holder: list[Idp] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            idp = holder[0]
            if self.path != "/jwks":
                self.send_error(404)
                return
            idp.hits += 1
            data = json.dumps(idp.jwks()).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

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

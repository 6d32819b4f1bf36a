"""The gateway app, offline: a real state dir (CAs, identity store, audit log, default policies) built by
`raywarden init`, the app as `raywarden up` builds it, Starlette's TestClient in front, and a fake Ray
dashboard (tests/unit/gateway/fake_ray.py) behind it."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from starlette.testclient import TestClient

from raywarden.cluster.setup import init_state
from raywarden.config import ClusterConfig, Listen
from raywarden.gateway.app import GatewayApp
from raywarden.gateway.serve.control import ServeControl
from raywarden.gateway.serve.table import Pinned
from raywarden.gateway.server import build_app
from raywarden.gateway.tls import PEER_CERT_STATE_KEY
from raywarden.gateway.tokens import TokenAuthority
from raywarden.identity.store import IdentityStore
from raywarden.pki.ca_keys import CertificateAuthority
from raywarden.pki.certs import serial_hex
from raywarden.pki.keys import generate_private_key
from raywarden.pki.spiffe import SpiffeId
from raywarden.state import StateDir
from tests.unit.gateway.fake_ray import FakeRay

TD = "td.test"
PORT = 8443
SERVE_PORT = 8000  # where the fake Serve is pinned (Serve's proxy on loopback)
BASE_URL = f"https://127.0.0.1:{PORT}"
WS_URL = f"wss://127.0.0.1:{PORT}"


def spiffe(name: str, kind: str = "user") -> str:
    return f"spiffe://{TD}/{kind}/{name}"


@dataclass(frozen=True)
class Raw:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Gateway:
    state: StateDir
    ray: FakeRay
    app: GatewayApp
    client: TestClient
    store: IdentityStore
    tokens: TokenAuthority

    def principal(self, name: str, *groups: str, kind: str = "user") -> str:
        ident = spiffe(name, kind)
        if self.store.get(ident) is None:
            self.store.add_principal(SpiffeId.parse(ident), list(groups), created_by="test")
        return ident

    def bearer(self, name: str, *groups: str, kind: str = "user") -> dict[str, str]:
        """Authorization headers for a principal (created with ``groups`` on first use)."""
        ident = self.principal(name, *groups, kind=kind)
        issued = self.tokens.issue(ident)
        self.store.record_token(issued.jti, ident, issued.expires_at, issued_by="test")
        return {"authorization": f"Bearer {issued.token.reveal()}"}

    def certificate(self, name: str, *groups: str) -> bytes:
        """A client certificate from the access CA, registered like `raywarden user add` registers one."""
        ident = self.principal(name, *groups)
        access = CertificateAuthority.load("access", TD, self.state.access_ca_cert, self.state.access_ca_key)
        key = generate_private_key()
        cert = access.issue(key.public_key(), SpiffeId.parse(ident), lifetime=dt.timedelta(hours=1))
        self.store.record_certificate(serial_hex(cert), ident, cert.not_valid_after_utc)
        return cert.public_bytes(serialization.Encoding.DER)

    @contextmanager
    def with_certificate(self, der: bytes) -> Iterator[None]:
        """Requests made inside come over a connection whose TLS layer verified this client certificate."""
        self.client.app_state[PEER_CERT_STATE_KEY] = der
        try:
            yield
        finally:
            self.client.app_state.pop(PEER_CERT_STATE_KEY, None)

    def records(self) -> list[dict[str, Any]]:
        """The log once every outcome record submitted so far is durable (they do not delay the answer)."""
        if self.client.portal is not None:
            self.client.portal.call(self.app.audit.drain)
        return read_records(self.state.audit_dir)

    def raw(
        self,
        method: str,
        raw_path: bytes,
        query: bytes = b"",
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> Raw:
        """A request with exactly these target bytes, as uvicorn's h11 parser hands them to the app (httpx
        would normalise a literal '#' or a bad escape away before the app saw it)."""
        fields = {"host": f"127.0.0.1:{PORT}", **(headers or {})}
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "https",
            "path": raw_path.decode("latin-1"),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in fields.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", PORT),
            "state": dict(self.client.app_state),
        }
        messages: list[dict[str, Any]] = []

        async def call() -> None:
            pending = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive() -> dict[str, Any]:
                return pending.pop() if pending else {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                messages.append(message)

            await self.app(scope, receive, send)

        portal = self.client.portal
        assert portal is not None, "use inside the gateway fixture (the TestClient is running)"
        portal.call(call)
        start = next(m for m in messages if m["type"] == "http.response.start")
        answer = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
        return Raw(start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, answer)

    def records_of(self, request_id: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("request_id") == request_id]

    def audited(self, request_id: str, decision: str, status: int) -> dict[str, Any]:
        """Exactly one decision record and one outcome record for the request; the decision record."""
        records = self.records_of(request_id)
        assert [r["kind"] for r in records] == ["request", "outcome"], records
        assert records[0]["decision"] == decision and records[1]["status"] == status, records
        return records[0]


def read_records(audit_dir: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(audit_dir.glob("audit-*.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return records


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    monkeypatch.setenv("RAYWARDEN_HOME", str(tmp_path / "home"))
    state = StateDir(tmp_path / "state")
    init_state(
        state,
        ClusterConfig(trust_domain=TD, listen=Listen(host="127.0.0.1", port=PORT)),
        admin_name="admin",
        profile_name="t",
    )
    ray = FakeRay(state.ray_token.read_text().strip())
    ray.probe = lambda: read_records(state.audit_dir)
    ray.start()
    app, audit = build_app(state, ray.url)
    serve = app.handlers["serve"]
    if isinstance(serve, ServeControl):  # as `up --serve-listen` makes it: Serve pinned on loopback
        serve.attach(Pinned("127.0.0.1", SERVE_PORT), None)
    store = IdentityStore.open(state.identity_db)
    try:
        with TestClient(app, base_url=BASE_URL, client=("127.0.0.1", 50000)) as client:
            yield Gateway(state, ray, app, client, store, TokenAuthority.for_state(state, state.load_config()))
    finally:
        assert audit is not None
        audit.close()
        ray.stop()

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
from raywarden.gateway.app import GatewayApp
from raywarden.gateway.server import build_app
from raywarden.gateway.tls import PEER_CERT_STATE_KEY
from raywarden.gateway.tokens import TokenAuthority
from raywarden.identity.store import IdentityStore
from raywarden.pki.ca_keys import CertificateAuthority
from raywarden.pki.certs import serial_hex
from raywarden.pki.keys import generate_private_key
from raywarden.pki.spiffe import SpiffeId
from raywarden.state import ClusterConfig, Listen, StateDir
from tests.unit.gateway.fake_ray import FakeRay

TD = "td.test"
PORT = 8443
BASE_URL = f"https://127.0.0.1:{PORT}"
WS_URL = f"wss://127.0.0.1:{PORT}"


def spiffe(name: str, kind: str = "user") -> str:
    return f"spiffe://{TD}/{kind}/{name}"


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
        return read_records(self.state.audit_dir)

    def records_of(self, request_id: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("request_id") == request_id]


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
    store = IdentityStore.open(state.identity_db)
    try:
        with TestClient(app, base_url=BASE_URL, client=("127.0.0.1", 50000)) as client:
            yield Gateway(state, ray, app, client, store, TokenAuthority.for_state(state, state.load_config()))
    finally:
        audit.close()
        ray.stop()

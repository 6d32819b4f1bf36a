"""Who the client is (issue 13 §5): by default no forwarded header is trusted, so no local client chooses the
source address that audit records, the policy's ``source_ip`` and the sign-in throttle see; a config field
names the reverse proxies whose X-Forwarded-For counts.

These run the gateway as `raywarden up` does: uvicorn with the gateway's TLS context, on a loopback port,
clients over real TLS connections (from 127.0.0.1 and from 127.0.0.2), and a fake Ray behind it.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from raywarden.cluster.setup import init_state
from raywarden.config import ClusterConfig, Listen
from raywarden.gateway.server import build_app, server_config
from raywarden.gateway.tls import server_context
from raywarden.state import StateDir
from tests.unit.gateway.conftest import TD, read_records
from tests.unit.gateway.fake_ray import FakeRay

pytestmark = pytest.mark.unit
PROXY = "127.0.0.2"  # another loopback address: a second host, as far as the gateway can tell


@dataclass
class Served:
    state: StateDir
    port: int

    def request(
        self, method: str, path: str, *, forwarded: str | None = None, body: bytes = b"", source: str = "127.0.0.1"
    ) -> tuple[int, dict[str, Any]]:
        ctx = ssl.create_default_context(cafile=str(self.state.access_ca_cert))
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=30, source_address=(source, 0))
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
        if forwarded is not None:
            headers["X-Forwarded-For"] = forwarded
        try:
            conn.request(method, path, body=body or None, headers=headers)
            resp = conn.getresponse()
            text = resp.read()
            return resp.status, {"request_id": resp.getheader("x-request-id"), "body": text}
        finally:
            conn.close()

    def source_of(self, request_id: str) -> str:
        record = next(r for r in read_records(self.state.audit_dir) if r.get("request_id") == request_id)
        return str(record["source"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    servers: list[tuple[uvicorn.Server, threading.Thread, FakeRay, Any]] = []

    def start(trusted: list[str]) -> Served:
        monkeypatch.setenv("RAYWARDEN_HOME", str(tmp_path / "home"))
        # uvicorn's own default would trust loopback, and this variable, if nothing said otherwise.
        monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
        port = _free_port()
        state = StateDir(tmp_path / "state")
        config = ClusterConfig(trust_domain=TD, listen=Listen(host="127.0.0.1", port=port), trusted_proxies=trusted)
        init_state(state, config, admin_name="admin", profile_name="t")
        ray = FakeRay(state.ray_token.read_text().strip()).start()
        app, audit = build_app(state, ray.url)
        server = uvicorn.Server(server_config(app, state.load_config(), server_context(state)))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "the gateway did not start"
        servers.append((server, thread, ray, audit))
        return Served(state, port)

    yield start
    for server, thread, ray, audit in servers:
        server.should_exit = True
        thread.join(30)
        audit.close()
        ray.stop()


def _failed_signins(served: Served, forwarded: list[str | None], source: str = "127.0.0.1") -> list[int]:
    return [
        served.request("POST", "/ui/signin", body=b"code=abc.wrong", forwarded=f, source=source)[0] for f in forwarded
    ]


def test_by_default_no_forwarded_header_is_trusted(serve: Any) -> None:
    served: Served = serve([])
    status, answer = served.request("GET", "/raywarden/v1/ca", forwarded="203.0.113.9")
    assert status == 200 and served.source_of(answer["request_id"]) == "127.0.0.1"
    # The review's replay: 12 failed sign-ins, each naming another address. The throttle sees one source.
    statuses = _failed_signins(served, [f"198.51.100.{i}" for i in range(12)])
    assert statuses[:10] == [401] * 10 and statuses[10:] == [429, 429], statuses
    # Nor does a second hop, or a Forwarded header, change anything.
    status, answer = served.request("GET", "/raywarden/v1/ca", forwarded="10.0.0.1, 10.0.0.2", source=PROXY)
    assert served.source_of(answer["request_id"]) == PROXY


def test_trusted_proxies_name_the_client(serve: Any) -> None:
    served: Served = serve([PROXY])
    status, answer = served.request("GET", "/raywarden/v1/ca", forwarded="203.0.113.9", source=PROXY)
    assert status == 200 and served.source_of(answer["request_id"]) == "203.0.113.9"
    # From anywhere else the header is still ignored: only the proxy may speak for its clients.
    status, answer = served.request("GET", "/raywarden/v1/ca", forwarded="203.0.113.9")
    assert served.source_of(answer["request_id"]) == "127.0.0.1"
    # Behind the proxy the throttle counts per client, and a client rotating the header from outside gets
    # nowhere: the proxy appends the address it saw, and that one is what counts.
    assert _failed_signins(served, ["198.51.100.7"] * 11, source=PROXY)[-1] == 429
    assert _failed_signins(served, ["198.51.100.8"], source=PROXY) == [401]
    rotating = [f"192.0.2.{i}, 198.51.100.9" for i in range(11)]
    assert _failed_signins(served, rotating, source=PROXY)[-1] == 429
    records = [r for r in read_records(served.state.audit_dir) if r.get("event") == "session.refused"]
    assert {"198.51.100.7", "198.51.100.8", "198.51.100.9"} <= {r["source"] for r in records}


def test_a_wildcard_or_a_name_is_not_a_trusted_proxy() -> None:
    for entry in ("*", "proxy.example", "10.0.0.0/33", ""):
        with pytest.raises(ValueError, match="trusted_proxies"):
            ClusterConfig(trusted_proxies=[entry])
    assert ClusterConfig(trusted_proxies=["10.0.0.0/8", "::1"]).trusted_proxies == ["10.0.0.0/8", "::1"]


def test_refusals_record_the_connections_address(serve: Any) -> None:
    served: Served = serve([])
    status, answer = served.request("POST", "/raywarden/v1/enroll", body=b"{}", forwarded="10.1.1.1")
    assert status == 400
    record = next(r for r in read_records(served.state.audit_dir) if r.get("request_id") == answer["request_id"])
    assert record["source"] == "127.0.0.1" and "10.1.1.1" not in json.dumps(record)

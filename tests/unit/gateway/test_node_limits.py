"""Node enrollment refusals are counted once for every gateway worker: two apps over one state dir (as two
workers run) share one failure count per source address."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from raywarden.gateway.control.nodes import MAX_FAILURES, FailureLimiter
from raywarden.gateway.server import build_app
from tests.unit.gateway.conftest import BASE_URL, Gateway

pytestmark = pytest.mark.unit

WRONG = json.dumps({"name": "worker-1", "node_secret": "not-the-secret"})


def test_failed_node_attempts_count_across_workers(gateway: Gateway) -> None:
    other, audit = build_app(gateway.state, gateway.ray.url)
    assert audit is not None
    try:
        with TestClient(other, base_url=BASE_URL, client=("127.0.0.1", 50000)) as second:
            clients = [gateway.client, second]
            for i in range(MAX_FAILURES):
                resp = clients[i % 2].post("/raywarden/v1/nodes/peers", content=WRONG)
                assert resp.status_code == 401, resp.text
            refused = []
            for client in clients:  # each worker saw half the attempts; both refuse the address now
                resp = client.post("/raywarden/v1/nodes/peers", content=WRONG)
                assert resp.status_code == 429 and "too many failed attempts" in resp.json()["error"]
                refused.append(resp.headers["x-request-id"])
            assert second.portal is not None
            second.portal.call(other.audit.drain)
            for request_id in refused:
                assert gateway.audited(request_id, "deny", 429)["reason"].startswith("rate limited")
            # Another address is not held to this one's count.
            assert not FailureLimiter(gateway.store).blocked("127.0.0.2")
    finally:
        audit.close()

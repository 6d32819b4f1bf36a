"""Answers the route table does not hold for a method, and the request id on WebSocket upgrades."""

from __future__ import annotations

import pytest

from tests.unit.gateway.conftest import WS_URL, Gateway, spiffe

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("method", ["HEAD", "PUT", "PATCH"])
def test_a_method_the_path_does_not_take_is_405_with_allow_and_audited(gateway: Gateway, method: str) -> None:
    resp = gateway.client.request(method, "/api/version", headers=gateway.bearer("alice", "developers"))
    assert resp.status_code == 405
    assert resp.headers["allow"] == "GET"
    record = gateway.audited(resp.headers["x-request-id"], "deny", 405)
    assert record["reason"] == f"method not in the route table: {method} /api/version"


def test_anonymous_wrong_method_learns_nothing_about_routes(gateway: Gateway) -> None:
    resp = gateway.client.request("HEAD", "/api/version")
    assert resp.status_code == 401 and "allow" not in resp.headers
    gateway.audited(resp.headers["x-request-id"], "deny", 401)


def test_unknown_path_is_still_404(gateway: Gateway) -> None:
    resp = gateway.client.request("HEAD", "/api/nowhere", headers=gateway.bearer("alice", "developers"))
    assert resp.status_code == 404 and "allow" not in resp.headers


def test_websocket_upgrade_answer_carries_the_request_id(gateway: Gateway) -> None:
    headers = gateway.bearer("tailer", "developers")
    gateway.ray.add_job("tailed-1", spiffe("tailer"))
    with gateway.client.websocket_connect(f"{WS_URL}/api/jobs/tailed-1/logs/tail", headers=headers) as ws:
        ids = [v.decode() for k, v in ws.extra_headers or [] if k.lower() == b"x-request-id"]
        assert ws.receive_text() == "tail of tailed-1\n"
        # Ray ends this tail: leaving before the gateway relayed the close would cancel the handler mid-way.
        assert ws.receive()["type"] == "websocket.close"
    assert len(ids) == 1
    records = gateway.records_of(ids[0])
    assert [r["kind"] for r in records] == ["request", "outcome"] and records[0]["websocket"] is True

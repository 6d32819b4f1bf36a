"""The refusal vocabulary: each kind of refusal has its status, a JSON error with the request id and a hint,
one decision record (deny for the caller's fault, error for the gateway's or Ray's) with the real reason,
one outcome record, and nothing reaches Ray."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.gateway.conftest import Gateway

pytestmark = pytest.mark.unit


def _refused(gateway: Gateway, resp: Any, status: int, error: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == error and body["request_id"] == resp.headers["x-request-id"]
    assert resp.headers["x-raywarden-gateway"] == "1" and resp.headers["cache-control"] == "no-store"
    assert body["hint"]
    decision = gateway.audited(body["request_id"], "error" if status >= 500 else "deny", status)
    assert decision["status"] == status and decision["reason"]
    return decision


def test_no_credential_is_401_with_a_hint(gateway: Gateway) -> None:
    resp = gateway.client.get("/api/version")
    record = _refused(gateway, resp, 401, "authentication required")
    assert record["decision"] == "deny" and "no client certificate" in record["reason"]
    assert resp.json()["hint"] and resp.headers["www-authenticate"].startswith("Bearer")


def test_a_bad_bearer_token_is_401_and_the_reason_stays_in_the_log(gateway: Gateway) -> None:
    resp = gateway.client.get("/api/version", headers={"authorization": "Bearer not.a.jwt"})
    record = _refused(gateway, resp, 401, "authentication failed")
    assert "malformed" in record["reason"] and "malformed" not in resp.text


def test_unknown_routes_are_401_for_strangers_and_404_for_callers(gateway: Gateway) -> None:
    _refused(gateway, gateway.client.get("/log_proxy?url=http://169.254.169.254/"), 401, "authentication required")
    resp = gateway.client.get("/log_proxy", headers=gateway.bearer("admin"))
    record = _refused(gateway, resp, 404, "no such route")
    assert record["decision"] == "deny" and resp.json()["hint"]


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/static/%252e%252e/etc/passwd", "malformed request path"),
        ("/api/jobs/a%5cb", "malformed request path"),
        ("/api/jobs/?limit=5", "query parameter not allowed: limit"),
        ("/dashboard/api/v0/tasks?job=1", "query parameter not allowed: job"),
    ],
)
def test_malformed_requests_are_400(gateway: Gateway, path: str, error: str) -> None:
    _refused(gateway, gateway.client.get(path, headers=gateway.bearer("admin")), 400, error)
    assert gateway.ray.requests(path=path.partition("?")[0]) == []


def test_a_body_where_none_belongs_and_an_oversized_body(gateway: Gateway) -> None:
    admin = gateway.bearer("admin")
    _refused(
        gateway,
        gateway.client.request("GET", "/api/version", content=b"x", headers=admin),
        400,
        "this route takes no request body",
    )
    big = b"{" + b" " * (70 * 1024) + b"}"
    resp = gateway.client.post("/raywarden/v1/enroll", content=big, headers={"content-type": "application/json"})
    _refused(gateway, resp, 413, "request body larger than 65536 bytes")


def test_a_policy_denial_is_403_with_a_hint(gateway: Gateway) -> None:
    resp = gateway.client.get("/dashboard/worker/traceback?pid=1", headers=gateway.bearer("alice", "developers"))
    record = _refused(gateway, resp, 403, "forbidden")
    assert record["decision"] == "deny" and record["action"] == "dashboard.profile" and resp.json()["hint"]
    assert [r for r in gateway.ray.received if "traceback" in r.path] == []


def test_another_developers_job_reads_like_a_missing_one(gateway: Gateway) -> None:
    gateway.ray.add_job("alice-job", gateway.principal("alice", "developers"))
    bob = gateway.bearer("bob", "developers")
    for method, path in (
        ("GET", "/api/jobs/alice-job"),
        ("POST", "/api/jobs/alice-job/stop"),
        ("DELETE", "/api/jobs/alice-job"),
        ("GET", "/api/jobs/no-such-job"),
    ):
        resp = gateway.client.request(method, path, headers=bob)
        assert resp.status_code == 404 and resp.json()["error"] == "no such job", path
    assert gateway.ray.requests("POST") == [] and gateway.ray.requests("DELETE") == []
    assert gateway.ray.jobs[0]["status"] == "RUNNING"


def test_browser_guards_refuse_foreign_hosts_and_origins(gateway: Gateway) -> None:
    admin = gateway.bearer("admin")
    resp = gateway.client.get("/api/version", headers={**admin, "host": "evil.example:8443"})
    record = _refused(gateway, resp, 421, "this gateway does not serve that host name")
    assert "DNS rebinding" in record["reason"]
    resp = gateway.client.post(
        "/api/jobs/", json={"entrypoint": "x"}, headers={**admin, "origin": "https://evil.example"}
    )
    record = _refused(gateway, resp, 403, "cross-origin request refused")
    assert "foreign Origin" in record["reason"]
    assert gateway.ray.requests("POST") == []


def test_ray_down_is_503_with_a_hint(gateway: Gateway) -> None:
    admin = gateway.bearer("admin")
    gateway.ray.stop()
    # Decided, then Ray did not answer: an allow and an outcome of 503.
    resp = gateway.client.get("/api/version", headers=admin)
    assert resp.status_code == 503 and resp.json()["error"] == "Ray is not reachable behind the gateway"
    assert resp.json()["hint"]
    gateway.audited(resp.json()["request_id"], "allow", 503)
    # A job route needs Ray to decide (the owner is in Ray's record): no decision could be made, an error.
    _refused(
        gateway, gateway.client.get("/api/jobs/some-job", headers=admin), 503, "Ray is not reachable behind the gateway"
    )

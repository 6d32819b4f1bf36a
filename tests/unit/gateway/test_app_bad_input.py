"""Bad input is a 400 with a hint, decided and audited (issue 13 §4): parsing is bounded before it starts,
and whatever else goes wrong is an audited 500, never an unrecorded crash. The same refusals have the same
statuses and the same audit vocabulary (allow, deny, error) over HTTP and WebSocket."""

from __future__ import annotations

import pytest
from starlette.testclient import WebSocketDenialResponse

from raywarden.gateway.control import ControlRequest, ControlResponse
from tests.unit.gateway.conftest import WS_URL, Gateway

pytestmark = pytest.mark.unit
DEEP = b"[" * 100_000 + b"]" * 100_000
CONTROL_DEEP = b"[" * 30_000 + b"]" * 30_000  # control bodies are at most 64 KiB

JOB_BODIES = [
    (b'{"entrypoint": "x", "entrypoint_num_cpus": 1e400}', "out of range"),
    (b'{"entrypoint": "x", "entrypoint_num_cpus": -1e400}', "out of range"),
    (b'{"entrypoint": "x", "entrypoint_num_cpus": 1' + b"0" * 400 + b"}", "more than 32 characters"),
    (b'{"entrypoint": "x", "entrypoint_memory": ' + b"9" * 5000 + b"}", "more than 32 characters"),
    (b'{"entrypoint": "x", "runtime_env": ' + DEEP + b"}", "nests deeper"),
    (b'{"entrypoint": "x", "metadata": {"a": NaN}}', "NaN is not JSON"),
    (b'{"entrypoint": "x", "entrypoint_num_gpus": Infinity}', "Infinity is not JSON"),
    (b'{"entrypoint": "x", "runtime_env": {"env_vars": {"K": "\xff"}}}', "not UTF-8"),
    (DEEP, "nests deeper"),
]


@pytest.mark.parametrize(("body", "error"), JOB_BODIES, ids=[e for _, e in JOB_BODIES])
def test_job_bodies_beyond_the_bounds_are_400(gateway: Gateway, body: bytes, error: str) -> None:
    resp = gateway.client.post(
        "/api/jobs/", content=body, headers={**gateway.bearer("admin"), "content-type": "application/json"}
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"].startswith("invalid job submission:") and error in resp.json()["error"]
    assert resp.json()["hint"]
    gateway.audited(resp.json()["request_id"], "deny", 400)
    assert gateway.ray.requests("POST") == []


def test_control_bodies_are_bounded_before_any_handler_runs(gateway: Gateway) -> None:
    """Anonymous enrollment, and token issue after the certificate check (the allow was once recorded with
    no outcome): both refused before the decision."""
    for body in (CONTROL_DEEP, b'{"code": 1' + b"0" * 40 + b"}", b'{"ttl_seconds": 1e999}', b"[]", b"{", b'{"a": 1} x'):
        resp = gateway.client.post("/raywarden/v1/enroll", content=body, headers={"content-type": "application/json"})
        assert resp.status_code == 400 and resp.json()["hint"], (body[:20], resp.text)
        gateway.audited(resp.json()["request_id"], "deny", 400)
        with gateway.with_certificate(gateway.certificate("alice", "developers")):
            resp = gateway.client.post("/raywarden/v1/token", content=body)
        assert resp.status_code == 400, (body[:20], resp.text)
        record = gateway.audited(resp.json()["request_id"], "deny", 400)
        assert record["auth_method"] == "certificate"


def test_console_forms_are_bounded_and_strict(gateway: Gateway) -> None:
    for form in (b"code=a&code=b", b"code=%zz", b"x=1", b"&".join([b"code=1"] * 20), b"code=a#b"):
        resp = gateway.client.post(
            "/ui/signin", content=form, headers={"content-type": "application/x-www-form-urlencoded"}
        )
        assert resp.status_code == 400, (form, resp.text)
        gateway.audited(resp.json()["request_id"], "deny", 400)


def test_a_crash_in_a_handler_is_an_audited_500(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last-resort handler: a handler that fails in a way nobody planned for (a stand-in here, since the
    point is the unplanned failure) still leaves both records and a JSON 500 with the request id."""

    async def broken(_: ControlRequest) -> ControlResponse:
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(gateway.app.handlers["control"].handlers, "raywarden.ca", broken)  # type: ignore[attr-defined]
    resp = gateway.client.get("/raywarden/v1/ca")
    assert resp.status_code == 500 and resp.json()["request_id"] == resp.headers["x-request-id"]
    assert "ZeroDivisionError" not in resp.text and resp.json()["hint"]
    record = gateway.audited(resp.json()["request_id"], "error", 500)
    assert "ZeroDivisionError" in record["reason"]


def test_ray_down_is_the_same_error_over_http_and_websocket(gateway: Gateway) -> None:
    gateway.ray.add_job("a1", gateway.principal("alice", "developers"))
    headers = gateway.bearer("alice")
    gateway.ray.stop()
    http = gateway.client.get("/api/jobs/a1/logs", headers=headers)
    assert http.status_code == 503
    gateway.audited(http.json()["request_id"], "error", 503)
    with pytest.raises(WebSocketDenialResponse) as denied:
        with gateway.client.websocket_connect(f"{WS_URL}/api/jobs/a1/logs/tail", headers=headers):
            pass
    assert denied.value.status_code == 503
    gateway.audited(denied.value.json()["request_id"], "error", 503)


def test_refusals_over_websocket_match_http(gateway: Gateway) -> None:
    gateway.ray.add_job("a1", gateway.principal("alice", "developers"))
    cases = [({}, 401), (gateway.bearer("bob", "developers"), 404)]
    for headers, status in cases:
        with pytest.raises(WebSocketDenialResponse) as denied:
            with gateway.client.websocket_connect(f"{WS_URL}/api/jobs/a1/logs/tail", headers=headers):
                pass
        assert denied.value.status_code == status
        gateway.audited(denied.value.json()["request_id"], "deny", status)
        http = gateway.client.get("/api/jobs/a1/logs", headers=headers)
        assert http.status_code == status


def test_an_answer_ray_gives_that_cannot_be_checked_is_502_everywhere(gateway: Gateway) -> None:
    gateway.ray.job_list_body = b'["not a job record"]'
    headers = gateway.bearer("alice", "developers")
    for path in ("/api/jobs/", "/dashboard/api/jobs/", "/dashboard/api/v0/tasks", "/ui/jobs"):
        resp = gateway.client.get(path, headers=headers)
        assert resp.status_code == 502, (path, resp.text)
        assert resp.json()["error"] == "Ray's answer could not be checked"
        gateway.audited(resp.json()["request_id"], "allow", 502)

"""Clients that leave mid-request (attack replays of stream_abort.py and of a stalled body): the decision and
outcome records say the client left (or timed out) and how much arrived; nothing counts as Ray's failure."""

from __future__ import annotations

from typing import Any

import pytest

from raywarden.gateway.deadlines import CONNECTION_STATE_KEY, ConnectionMark
from raywarden.gateway.telemetry import UPSTREAM_ERRORS
from tests.unit.gateway.conftest import PORT, Gateway

pytestmark = pytest.mark.unit


def upstream_errors() -> float:
    return sum(s.value for m in UPSTREAM_ERRORS.collect() for s in m.samples if s.name.endswith("_total"))


def send_and_leave(
    gw: Gateway, method: str, path: str, headers: dict[str, str], parts: list[bytes], timed_out: bool = False
) -> list[dict[str, Any]]:
    """The request's headers and ``parts`` of its body, then the client is gone (uvicorn's http.disconnect)."""
    mark = ConnectionMark()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", f"127.0.0.1:{PORT}".encode())]
        + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", PORT),
        "state": {**gw.client.app_state, CONNECTION_STATE_KEY: mark},
    }
    pending = [{"type": "http.request", "body": part, "more_body": True} for part in parts]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        mark.timed_out = timed_out
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def call() -> None:
        await gw.app(scope, receive, send)

    portal = gw.client.portal
    assert portal is not None
    portal.call(call)
    assert not [m for m in sent if m["type"] == "http.response.start"]  # nobody is left to answer
    request = [r for r in gw.records() if r.get("kind") == "request" and r.get("path") == path]
    assert len(request) == 1, request
    return gw.records_of(request[0]["request_id"])


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_upload_aborted_mid_body(gateway: Gateway, framing: str) -> None:
    headers = gateway.bearer("alice", "developers")
    headers.update(
        {"content-length": str(50 << 20)} if framing == "content-length" else {"transfer-encoding": "chunked"}
    )
    before = upstream_errors()
    path = "/api/packages/gcs/_ray_pkg_0123456789abcdef.zip"
    decision, outcome = send_and_leave(gateway, "PUT", path, headers, [b"x" * (1 << 20)] * 3)
    assert decision["decision"] == "allow"
    assert outcome["outcome"] == "client_aborted" and outcome["status"] == 499
    assert outcome["bytes_received"] == 3 << 20
    assert upstream_errors() == before
    assert path not in getattr(gateway.ray, "_packages", {})


def test_job_submission_body_stalled_past_the_idle_timeout(gateway: Gateway) -> None:
    headers = gateway.bearer("alice", "developers")
    headers.update({"content-type": "application/json", "content-length": "500"})
    decision, outcome = send_and_leave(gateway, "POST", "/api/jobs/", headers, [b'{"entrypoint": "'], timed_out=True)
    assert decision["status"] == 408 and decision["decision"] == "deny"
    assert outcome["outcome"] == "client_timeout" and outcome["bytes_received"] == 16

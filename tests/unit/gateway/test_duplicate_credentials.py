"""A request carrying two Authorization fields names two credentials; which one it acts as must not depend
on which reader looks (RFC 9110 makes Authorization a singleton field). The gateway takes the first
(gateway/middleware/__init__.py, ``header``), while a proxy or a log in front of it may take the last or join
them: such a request is refused (400, audited) rather than read one way; so is a repeated Cookie field, which
RFC 6265 has a browser never send; on both listeners. Offline gateway, real tokens and identity store, the Serve
listener's app as the gateway builds it."""

from __future__ import annotations

from typing import Any

import pytest

from raywarden.gateway.serve.server import build_listener
from tests.unit.gateway.conftest import SERVE_PORT, Gateway

pytestmark = pytest.mark.unit


def test_two_authorization_fields_are_refused(gateway: Gateway) -> None:
    alice = gateway.bearer("alice", "developers")["authorization"]
    bob = gateway.bearer("bob")["authorization"]
    resp = gateway.client.get("/raywarden/v1/whoami", headers=[("authorization", alice), ("authorization", bob)])
    assert resp.status_code == 400, f"acted as {resp.json().get('identity', resp.text)}"
    assert "one Authorization header" in resp.json()["hint"]
    decision = gateway.audited(resp.headers["x-request-id"], "deny", 400)
    assert decision["principal"] is None and "2 Authorization headers" in decision["reason"]


def test_one_authorization_field_is_accepted(gateway: Gateway) -> None:
    resp = gateway.client.get("/raywarden/v1/whoami", headers=gateway.bearer("alice", "developers"))
    assert resp.status_code == 200, resp.text


def test_two_cookie_fields_are_refused(gateway: Gateway) -> None:
    headers = [("cookie", "__Host-raywarden-session=a"), ("cookie", "__Host-raywarden-session=b")]
    resp = gateway.client.get("/ui/", headers=headers, follow_redirects=False)
    assert resp.status_code == 400, resp.text
    gateway.audited(resp.headers["x-request-id"], "deny", 400)


def test_the_serve_listener_refuses_two_authorization_fields(gateway: Gateway) -> None:
    listener = build_listener(
        gateway.state,
        gateway.state.load_config(),
        gateway.app.audit,
        gateway.app.services.authenticator,
        lambda: gateway.app.engine,
        gateway.ray.url,
        f"http://127.0.0.1:{SERVE_PORT}",
    )
    alice = gateway.bearer("alice", "developers")["authorization"].encode()
    bob = gateway.bearer("bob")["authorization"].encode()
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/app/",
        "raw_path": b"/app/",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), (b"authorization", alice), (b"authorization", bob)],
        "client": ("127.0.0.1", 50000),
        "state": {},
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    assert gateway.client.portal is not None
    try:
        gateway.client.portal.call(listener, scope, receive, send)
    finally:
        listener.s.limits.close()
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 400
    request_id = dict(start["headers"])[b"x-request-id"].decode()
    assert gateway.audited(request_id, "deny", 400)["listener"] == "serve"

"""A request carrying two Authorization fields names two credentials; which one it acts as must not depend
on which reader looks (RFC 9110 makes Authorization a singleton field). The gateway takes the first
(gateway/middleware/__init__.py, ``header``), while a proxy or a log in front of it may take the last or join
them: such a request is refused (400, audited) rather than read one way; so is a repeated Cookie field, which
RFC 6265 has a browser never send. Offline gateway, real tokens and identity store."""

from __future__ import annotations

import pytest

from tests.unit.gateway.conftest import Gateway

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

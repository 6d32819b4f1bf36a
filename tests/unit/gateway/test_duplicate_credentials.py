"""A request carrying two Authorization fields names two credentials; which one it acts as must not depend
on which reader looks (RFC 9110 makes Authorization a singleton field). The gateway takes the first
(gateway/middleware/__init__.py, ``header``), while a proxy or a log in front of it may take the last or join
them: such a request is refused rather than read one way. Offline gateway, real tokens and identity store."""

from __future__ import annotations

import pytest

from tests.unit.gateway.conftest import Gateway

pytestmark = pytest.mark.unit


def test_two_authorization_fields_are_refused(gateway: Gateway) -> None:
    alice = gateway.bearer("alice", "developers")["authorization"]
    bob = gateway.bearer("bob")["authorization"]
    resp = gateway.client.get("/raywarden/v1/whoami", headers=[("authorization", alice), ("authorization", bob)])
    assert resp.status_code in (400, 401), f"acted as {resp.json().get('identity', resp.text)}"

"""A forwarded header no longer chooses the source address (issue 13 §5), against the real gateway that
`raywarden up` started: by default it trusts no X-Forwarded-For, so the review's replay (failed sign-ins,
each with another forwarded address) meets the sign-in throttle, and audit records and policies see the
connection's address. The trusted-proxy configuration is tested on a live uvicorn server too
(tests/unit/gateway/test_server_proxies.py).

The attempts come from their own loopback address, so that the throttle they trigger keeps no other test
(and no browser test of this session) from signing in.
"""

from __future__ import annotations

import json

import pytest

from tests.support import Cluster, raw_https

pytestmark = pytest.mark.integration
SOURCE = "127.0.0.57"


def test_rotating_forwarded_addresses_do_not_escape_the_signin_throttle(cluster: Cluster) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    statuses, ids = [], []
    for i in range(12):
        headers = {**form, "X-Forwarded-For": f"198.51.100.{i}", "Forwarded": f"for=198.51.100.{i}"}
        status, answer_headers, _ = raw_https(
            cluster, "POST", "/ui/signin", body=b"code=abc.wrong", headers=headers, source=SOURCE
        )
        statuses.append(status)
        ids.append(answer_headers["x-request-id"])
    assert statuses[:10] == [401] * 10 and statuses[10:] == [429, 429], statuses
    records = [r for r in cluster.audit_records() if r.get("request_id") in set(ids)]
    assert records and {r.get("source") for r in records if r["kind"] == "request"} == {SOURCE}
    assert "198.51.100" not in json.dumps(records)


def test_policies_see_the_connections_address(cluster: Cluster) -> None:
    status, headers, _ = raw_https(
        cluster,
        "GET",
        "/api/version",
        headers={"X-Forwarded-For": "10.20.30.40"},
        cert=cluster.admin_cert,
        source=SOURCE,
    )
    assert status == 200
    (record,) = [
        r for r in cluster.audit_records() if r.get("request_id") == headers["x-request-id"] and r["kind"] == "request"
    ]
    assert record["source"] == SOURCE and record["policy_input"]["context"]["source_ip"] == SOURCE

"""Which ports a cluster's nftables table protects, read back from the rules (as written and as listed)."""

from __future__ import annotations

import pytest

from raywarden.cluster import firewall
from raywarden.cluster.ports import RayPorts
from raywarden.doctor.listeners import _covered_ports, _uncovered

pytestmark = pytest.mark.unit
ANY_V4 = "0.0.0.0"  # noqa: S104 - an address as /proc shows it, nothing binds here

LISTED = """table inet raywarden_0123456789ab {
    set peers {
        type ipv4_addr
        elements = { 192.0.2.7, 192.0.2.8 }
    }

    set ray_ports {
        type inet_service
        flags interval
        elements = { 21024-21027, 35167,
                 59749 }
    }

    set metrics_ports {
        type inet_service
        elements = { 33559 }
    }
}
"""


def test_listed_table() -> None:
    covered, peers = _covered_ports(LISTED)
    assert covered == {21024, 21025, 21026, 21027, 35167, 59749, 33559}
    assert peers == 2


def test_rules_as_raywarden_writes_them() -> None:
    ports = RayPorts.allocate()
    plan = firewall.FirewallPlan.for_ports("raywarden_test", ports)
    covered, peers = _covered_ports(firewall.ruleset(plan))
    assert set(ports.all_fixed()) <= covered
    assert {ports.min_worker, ports.max_worker} <= covered and peers == 0


def test_wildcard_listeners_in_the_ephemeral_range_are_covered_unless_public() -> None:
    ports = RayPorts.allocate()
    plan = firewall.FirewallPlan.for_ports("raywarden_test", ports, gateway_port=40000, public=[40001])
    assert plan.ephemeral_range is not None
    low, high = plan.ephemeral_range
    replica = next(p for p in range(low, high + 1) if p not in (40000, 40001) and p not in ports.all_fixed())
    rules = firewall.ruleset(plan)
    # A Serve replica's gRPC server binds [::]:0; on one address it is not the wildcard rule's.
    assert _uncovered(rules, {replica: "::"}) == []
    assert _uncovered(rules, {replica: ANY_V4}) == []
    assert _uncovered(rules, {replica: "192.0.2.7"}) == [replica]
    # The gateway's listeners are exempt from the rule, so a Ray listener there would be uncovered.
    assert _uncovered(rules, {40000: "::", 40001: ANY_V4}) == [40000, 40001]
    if high < 65535:
        assert _uncovered(rules, {high + 1: "::"}) == [high + 1]


def test_listed_ephemeral_sets() -> None:
    listed = LISTED.rstrip()[:-1] + (
        "    set ephemeral_ports {\n        type inet_service\n        flags interval\n"
        "        elements = { 32768-60999 }\n    }\n\n"
        "    set public_ports {\n        type inet_service\n        elements = { 40000 }\n    }\n}\n"
    )
    assert _uncovered(listed, {45000: "::", 40000: "::", 59749: "192.0.2.1"}) == [40000]

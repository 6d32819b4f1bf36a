"""Which ports a cluster's nftables table protects, read back from the rules (as written and as listed)."""

from __future__ import annotations

import pytest

from raywarden.cluster import firewall
from raywarden.cluster.ports import RayPorts
from raywarden.doctor.listeners import _covered_ports

pytestmark = pytest.mark.unit

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

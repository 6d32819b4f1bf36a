"""Ports another cluster's firewall claims are never chosen: its owner rules would refuse our Ray's user there."""

from __future__ import annotations

import os
import secrets

import pytest

from raywarden.cluster import firewall
from raywarden.cluster.ports import RayPorts

pytestmark = pytest.mark.unit


def test_allocation_avoids_claimed_ports() -> None:
    first = RayPorts.allocate()
    claimed = frozenset(first.all_fixed()) | frozenset(range(first.min_worker, first.max_worker + 1))
    second = RayPorts.allocate(avoid=claimed)
    assert not set(second.all_fixed()) & claimed
    assert not set(range(second.min_worker, second.max_worker + 1)) & claimed


@pytest.mark.skipif(firewall.available() is not None, reason="reading nftables tables needs root and nft")
def test_claimed_ports_are_read_from_other_tables() -> None:
    ports = RayPorts.allocate()
    table = f"raywarden_test{secrets.token_hex(4)}"
    firewall.install(firewall.FirewallPlan.for_ports(table, ports, extra=[1], owners=[os.geteuid()]))
    try:
        claimed = firewall.claimed_ports()
        assert set(ports.all_fixed()) | {ports.min_worker, ports.max_worker, 1} <= claimed
        assert 1 not in firewall.claimed_ports(except_table=table)
    finally:
        firewall.remove_table(table)

"""Join tokens and the node registry on a real SQLite file: hashed, single-use, expiring, burnt after guessing;
and the firewall rules a head renders. No namespaces or root needed."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from raywarden.cluster.firewall import FirewallPlan, ruleset
from raywarden.cluster.ports import RayPorts
from raywarden.identity.node_records import NodeRegistryError
from raywarden.identity.nodes import MAX_TOKEN_FAILURES, NodeRegistry
from raywarden.identity.store import IdentityStore
from raywarden.secret import Secret

pytestmark = pytest.mark.unit


@pytest.fixture
def registry(tmp_path: Path) -> NodeRegistry:
    IdentityStore.create(tmp_path / "identity.db")
    return NodeRegistry.open(tmp_path / "identity.db")


def _token_row(registry: NodeRegistry, token_id: str) -> tuple[object, ...]:
    with registry._connect() as db:
        row = db.execute("SELECT used_at, failures FROM node_join_tokens WHERE token_id = ?", (token_id,)).fetchone()
    assert row is not None
    return tuple(row)


def test_token_is_stored_hashed_and_single_use(registry: NodeRegistry, tmp_path: Path) -> None:
    token = registry.create_token(dt.timedelta(minutes=10), created_by="test")
    secret = token.token.reveal().split(".")[2]
    assert secret.encode() not in (tmp_path / "identity.db").read_bytes()
    assert "*" in repr(token.token)
    assert registry.consume_token(token.token, used_by="n1@10.0.0.3") == token.token_id
    with pytest.raises(NodeRegistryError, match="already used"):
        registry.consume_token(token.token, used_by="n2@10.0.0.4")


def test_expired_token_is_refused_and_stays_unused(registry: NodeRegistry) -> None:
    token = registry.create_token(dt.timedelta(seconds=-1), created_by="test")
    with pytest.raises(NodeRegistryError, match="expired"):
        registry.consume_token(token.token, used_by="n1")
    assert _token_row(registry, token.token_id) == (None, 0)


def test_wrong_secret_counts_and_burns_the_token(registry: NodeRegistry) -> None:
    token = registry.create_token(dt.timedelta(minutes=10), created_by="test")
    forged = Secret(f"rwj.{token.token_id}.{'x' * 43}")
    for _ in range(MAX_TOKEN_FAILURES):
        with pytest.raises(NodeRegistryError, match="wrong secret"):
            registry.consume_token(forged, used_by="guesser")
    with pytest.raises(NodeRegistryError, match="burnt"):
        registry.consume_token(token.token, used_by="n1")
    assert _token_row(registry, token.token_id) == (None, MAX_TOKEN_FAILURES)


@pytest.mark.parametrize("text", ["", "rwj", "rwj.short.x", "abc.0123456789abcdef.secret", "rwj.0123456789abcdef."])
def test_malformed_tokens_are_refused(registry: NodeRegistry, text: str) -> None:
    with pytest.raises(NodeRegistryError, match="malformed"):
        registry.consume_token(Secret(text), used_by="n1")


def test_revoked_node_and_address_are_not_admissible(registry: NodeRegistry) -> None:
    registry.add_node(
        name="w1",
        spiffe_id="spiffe://td/node/w1",
        address="10.0.0.3",
        serial="ab",
        not_after=dt.datetime.now(dt.timezone.utc),
        ports={},
        node_secret=Secret("s3cret"),
        token_id="0" * 16,
    )
    with pytest.raises(NodeRegistryError, match="already active"):
        registry.check_admissible("w1", "10.0.0.7")
    assert registry.authenticate_node("w1", Secret("s3cret")).address == "10.0.0.3"
    with pytest.raises(NodeRegistryError, match="wrong node secret"):
        registry.authenticate_node("w1", Secret("guess"))
    registry.revoke("w1", revoked_by="test", reason="test")
    for name, address in (("w1", "10.0.0.9"), ("w2", "10.0.0.3")):
        with pytest.raises(NodeRegistryError, match="revoked"):
            registry.check_admissible(name, address)
    assert registry.active_addresses() == [] and registry.revoked_addresses() == ["10.0.0.3"]


def test_head_ruleset_admits_peers_only_and_keeps_metrics_on_loopback() -> None:
    ports = RayPorts.allocate()
    rules = ruleset(
        FirewallPlan.for_ports("raywarden_t", ports, peers=["10.0.0.3"], banned=["10.0.0.9"], gateway_port=8443)
    )
    assert "elements = { 10.0.0.3 }" in rules and "elements = { 10.0.0.9 }" in rules
    assert f"{ports.min_worker}-{ports.max_worker}" in rules
    metrics_line = next(line for line in rules.splitlines() if "set metrics_ports" in line)
    assert all(str(p) in metrics_line for p in ports.metrics())
    chain = rules[rules.index("chain input") :]
    # Order matters: loopback first, banned before peers, and the catch-all drop after the peer accept.
    assert (
        chain.index("iif lo accept")
        < chain.index("@banned")
        < chain.index("@peers")
        < chain.index("tcp dport @ray_ports drop")
    )

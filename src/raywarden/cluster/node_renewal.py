"""The head's side of a worker node's certificate renewal (the node's side is cluster/agent.py).

A node's agent asks, with its node secret, from its own address, once 2/3 of its certificate's life has
passed. The head grants one restart lease at a time (so that at most one worker is drained at once), issues
the new certificate with the internal CA's current files, and answers with it and the internal CA bundle
Ray must trust from its next start. The node then drains, restarts its Ray and reports back, which returns
the lease. Called by the gateway's control handlers (gateway/control/nodes.py).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from raywarden.cluster.admission import MAX_CSR_BYTES, csr_key, head_plan, issue_node_certificate
from raywarden.cluster.certlife import Lifetime, now_utc
from raywarden.config import ClusterConfig
from raywarden.identity.node_records import Node, NodeRegistryError
from raywarden.identity.nodes import NodeRegistry
from raywarden.pki.certs import cert_pem, serial_hex
from raywarden.pki.spiffe import NAME_RE, SpiffeId
from raywarden.secret import Secret
from raywarden.state import StateDir, trusted_ca_file

# A lease covers the drain and then the restart: this long for the restart (Ray took 20-60 s on a busy host).
RESTART_BUDGET = dt.timedelta(minutes=3)
# However short the certificates, a node is not issued two within this fraction of their lifetime.
MIN_INTERVAL_FRACTION = 0.1


class RenewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=NAME_RE.pattern)
    node_secret: str = Field(max_length=128)
    csr_pem: str = Field(max_length=MAX_CSR_BYTES)
    # The certificate the node's Ray runs with now (for the audit record).
    serial: str = Field(default="", max_length=64, pattern=r"^[0-9a-f]*$")


class RestartReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=NAME_RE.pattern)
    node_secret: str = Field(max_length=128)
    serial: str = Field(max_length=64, pattern=r"^[0-9a-f]*$")
    ok: bool
    error: str | None = Field(default=None, max_length=500)
    # How the drain ended: Ray finished its running work, or the deadline stopped it, or Ray was not running.
    drain: Literal["complete", "deadline", "not running"] | None = None
    drain_seconds: float | None = Field(default=None, ge=0, le=10**7)
    restart_seconds: float | None = Field(default=None, ge=0, le=10**7)


def renew(
    state: StateDir, config: ClusterConfig, registry: NodeRegistry, request: RenewRequest, source: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Grant the restart lease and issue the node's next certificate. Returns (response body, audit fields);
    raises NodeRegistryError (401 unknown or wrong secret, 403 wrong address, 409 another node is restarting,
    429 renewed moments ago)."""
    node = _node_from_its_address(registry, request.name, request.node_secret, source)
    public_key = csr_key(request.csr_pem)
    now = now_utc()
    _refuse_too_soon(node, config, now)
    left = max(dt.datetime.fromisoformat(node.not_after) - now, dt.timedelta(0))
    lease = registry.acquire_lease(node.name, min(config.node_drain_timeout, left) + RESTART_BUDGET)
    if lease.node != node.name:
        wait = max(1.0, lease.expires_at - now.timestamp())
        raise NodeRegistryError(
            f"restart lease held by node {lease.node} until {dt.datetime.fromtimestamp(lease.expires_at, dt.UTC)}",
            public="another node is restarting for its certificate; one node restarts at a time",
            status=409,
            hint=f"the node agent retries by itself; next try in {min(wait, 15.0):.0f}s",
            retry_after_s=min(wait, 15.0),
        )
    try:
        cert = issue_node_certificate(state, config, public_key, SpiffeId.parse(node.spiffe_id), node.address)
        registry.record_certificate(node.name, serial_hex(cert), Lifetime.of(cert).issued, cert.not_valid_after_utc)
    except BaseException:
        registry.release_lease(node.name)
        raise
    plan = head_plan(state)
    body = {
        "name": node.name,
        "serial": serial_hex(cert),
        "node_cert_pem": cert_pem(cert).decode(),
        # Every internal CA Ray must trust from its next start: a new CA reaches nodes this way.
        "internal_ca_pem": trusted_ca_file(state, "internal").read_text(),
        "access_ca_pem": trusted_ca_file(state, "access").read_text(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "lease_until": dt.datetime.fromtimestamp(lease.expires_at, dt.UTC).isoformat(),
        "drain_timeout_s": config.node_drain_timeout.total_seconds(),
        "peers": sorted({plan["node_ip"], *registry.active_addresses()} - {node.address}),
        "revoked": registry.revoked_addresses(),
    }
    audit = {
        "event": "node.cert.renew",
        "node": node.name,
        "node_address": node.address,
        "old_serial": request.serial or node.serial,
        "serial": serial_hex(cert),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "lease_until": body["lease_until"],
    }
    return body, audit


def restarted(registry: NodeRegistry, report: RestartReport, source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The node's Ray restarted (or failed to) after a renewal: return the lease, count failures."""
    node = _node_from_its_address(registry, report.name, report.node_secret, source)
    held = registry.release_lease(node.name)
    failures = registry.record_outcome(node.name, ok=report.ok, error=report.error)
    audit = {
        "event": "node.rejoin" if report.ok else "node.restart_failed",
        "node": node.name,
        "node_address": node.address,
        "serial": report.serial,
        "drain": report.drain,
        "drain_seconds": report.drain_seconds,
        "restart_seconds": report.restart_seconds,
        "lease_held": held,
        "failures": failures,
    }
    if report.error:
        audit["error"] = report.error
    return {"ok": True, "failures": failures}, audit


def _node_from_its_address(registry: NodeRegistry, name: str, node_secret: str, source: str) -> Node:
    node = registry.authenticate_node(name, Secret(node_secret))
    if node.address != source:
        # The certificate names the node's address; only that address speaks for the node.
        raise NodeRegistryError(
            f"node {name} is at {node.address}, the request came from {source}",
            public="a node speaks from its own address",
            status=403,
        )
    return node


def _refuse_too_soon(node: Node, config: ClusterConfig, now: dt.datetime) -> None:
    if node.renewal.renewed_at is None:
        return
    interval = config.node_cert_ttl * MIN_INTERVAL_FRACTION
    since = now - dt.datetime.fromisoformat(node.renewal.renewed_at)
    if since < interval:
        wait = (interval - since).total_seconds()
        raise NodeRegistryError(
            f"node {node.name} was issued a certificate {since.total_seconds():.0f}s ago",
            public="this node was issued a certificate moments ago",
            status=429,
            hint=f"retry in {wait:.0f}s",
            retry_after_s=wait,
        )

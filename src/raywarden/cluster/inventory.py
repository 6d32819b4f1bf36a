"""Every certificate a cluster holds, with its expiry, when it is renewed and how: what `raywarden cert status`
prints and what `doctor` judges. On a head: the CAs, the gateway, the head node and each worker node (as the
registry knows them); on a worker: its own node certificate and the CAs it trusts."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography import x509

from raywarden.cluster.certlife import Lifetime, describe_left, now_utc
from raywarden.cluster.nodestate import NodeState
from raywarden.config import ClusterConfig
from raywarden.errors import RaywardenError
from raywarden.identity.node_records import Node
from raywarden.identity.nodes import NodeRegistry
from raywarden.pki.certs import fingerprint, load_cert, serial_hex, spiffe_id_of
from raywarden.state import StateDir

Health = Literal["ok", "renewal due", "overdue", "expiring", "expired", "unreadable"]
# The head's certificate is renewed only when the head's Ray restarts: warned about this long before expiry.
HEAD_WARN = (dt.timedelta(days=30), dt.timedelta(days=7), dt.timedelta(days=1))
CA_WARN = dt.timedelta(days=30)


@dataclass(frozen=True)
class CertEntry:
    kind: str  # "access CA", "internal CA", "gateway", "head node", "worker node"
    name: str
    serial: str
    identity: str
    not_after: str
    seconds_left: float
    renew_at: str | None  # None: not renewed automatically
    renewal: str  # how it is renewed
    health: Health
    note: str = ""

    def public(self) -> dict[str, Any]:
        return asdict(self)


def _identity(cert: x509.Certificate) -> str:
    try:
        return str(spiffe_id_of(cert))
    except RaywardenError:
        return cert.subject.rfc4514_string()


def _auto(
    kind: str, name: str, serial: str, identity: str, life: Lifetime, how: str, now: dt.datetime, note: str = ""
) -> CertEntry:
    left = life.left(now)
    health: Health = "ok"
    if left <= dt.timedelta(0):
        health = "expired"
    elif life.overdue(now):
        health = "overdue"
    elif life.due(now):
        health = "renewal due"
    return CertEntry(
        kind, name, serial, identity, life.not_after.isoformat(), left.total_seconds(), life.renew_at().isoformat(),
        how, health, note,
    )  # fmt: skip


def _manual(
    kind: str, name: str, cert: x509.Certificate, how: str, now: dt.datetime, warn: dt.timedelta, note: str = ""
) -> CertEntry:
    left = cert.not_valid_after_utc - now
    health: Health = "expired" if left <= dt.timedelta(0) else "expiring" if left < warn else "ok"
    if health == "expiring":
        note = note or f"expires in {describe_left(left)}"
    return CertEntry(
        kind, name, serial_hex(cert), _identity(cert), cert.not_valid_after_utc.isoformat(), left.total_seconds(),
        None, how, health, note,
    )  # fmt: skip


def _unreadable(kind: str, name: str, path: Path, why: str) -> CertEntry:
    return CertEntry(kind, name, "", "", "", 0.0, None, "", "unreadable", f"{path}: {why}")


def _cas(kind: str, current: Path, bundle: Path, how: str, now: dt.datetime) -> list[CertEntry]:
    """The CA that signs now, and any other the bundle makes trusted (during a rotation)."""
    try:
        signing = load_cert(current)
    except RaywardenError as exc:
        return [_unreadable(kind, "current", current, exc.message)]
    found = [_manual(kind, "current", signing, how, now, CA_WARN)]
    try:
        trusted = x509.load_pem_x509_certificates(bundle.read_bytes()) if bundle.is_file() else []
    except (OSError, ValueError) as exc:
        return [*found, _unreadable(kind, "bundle", bundle, str(exc))]
    for ca in trusted:
        if fingerprint(ca) != fingerprint(signing):
            found.append(_manual(kind, "also trusted", ca, how, now, dt.timedelta(0), "in the trust bundle"))
    return found


def head_inventory(state: StateDir, config: ClusterConfig, now: dt.datetime | None = None) -> list[CertEntry]:
    now = now or now_utc()
    found = _cas("access CA", state.access_ca_cert, state.access_ca_bundle, "`raywarden ca rotate access`", now)
    found += _cas(
        "internal CA", state.internal_ca_cert, state.internal_ca_bundle, "`raywarden ca rotate internal`", now
    )
    try:
        gateway = load_cert(state.gateway_cert)
        how = "automatic, in place (same pid)"
        found.append(
            _auto("gateway", "gateway", serial_hex(gateway), _identity(gateway), Lifetime.of(gateway), how, now)
        )
    except RaywardenError as exc:
        found.append(_unreadable("gateway", "gateway", state.gateway_cert, exc.message))
    try:
        head = load_cert(state.node_cert)
        warn = max(HEAD_WARN)
        how = "`raywarden cert rotate --head` (or `up`)"
        found.append(_manual("head node", "head", head, how, now, warn))
    except RaywardenError as exc:
        found.append(_unreadable("head node", "head", state.node_cert, exc.message))
    if state.identity_db.is_file():
        for node in NodeRegistry.open(state.identity_db).all():
            if node.status == "active":
                found.append(_worker(node, config, now))
    return found


def _worker(node: Node, config: ClusterConfig, now: dt.datetime) -> CertEntry:
    not_after = dt.datetime.fromisoformat(node.not_after)
    issued = node.renewal.cert_issued_at
    # Nodes that joined under a release that did not record issuance: assume the configured lifetime.
    start = dt.datetime.fromisoformat(issued) if issued else not_after - config.node_cert_ttl
    note = node.address
    if node.renewal.failures:
        note += f"; {node.renewal.failures} failed renewal(s) in a row: {node.renewal.last_error or 'unknown'}"
    how = "automatic: node agent, drain and restart, one node at a time"
    return _auto("worker node", node.name, node.serial, node.spiffe_id, Lifetime(start, not_after), how, now, note)


def worker_inventory(node: NodeState, now: dt.datetime | None = None) -> list[CertEntry]:
    now = now or now_utc()
    config = node.load()
    found: list[CertEntry] = []
    try:
        cert = load_cert(node.node_cert)
        how = "automatic: node agent (drain, restart)"
        found.append(_auto("worker node", config.name, serial_hex(cert), _identity(cert), Lifetime.of(cert), how, now))
    except RaywardenError as exc:
        found.append(_unreadable("worker node", config.name, node.node_cert, exc.message))
    try:
        for ca in x509.load_pem_x509_certificates(node.internal_ca_cert.read_bytes()):
            found.append(_manual("internal CA", "trusted", ca, "from the head at renewal", now, CA_WARN))
    except (OSError, ValueError) as exc:
        found.append(_unreadable("internal CA", "trusted", node.internal_ca_cert, str(exc)))
    try:
        pinned = load_cert(node.access_ca_cert)
        found.append(_manual("access CA", "pinned", pinned, "pinned at join", now, CA_WARN))
    except RaywardenError as exc:
        found.append(_unreadable("access CA", "pinned", node.access_ca_cert, exc.message))
    return found

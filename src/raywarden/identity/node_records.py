"""What the node registry (nodes.py) hands out: enrolled nodes, join tokens, restart leases, and its refusals."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from raywarden.errors import RaywardenError
from raywarden.secret import Secret


class NodeRegistryError(RaywardenError):
    """A node operation was refused. ``reason`` is precise and for the audit log; ``public`` for the caller."""

    def __init__(
        self,
        reason: str,
        *,
        public: str = "join refused",
        status: int = 403,
        hint: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(reason, hint=hint)
        self.reason = reason
        self.public = public
        self.status = status
        # A refusal that is about timing, not about the caller: ask again after this long.
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class JoinToken:
    token_id: str
    token: Secret
    expires_at: dt.datetime


@dataclass(frozen=True)
class Renewal:
    """A node's certificate renewals as the head saw them (``cert_issued_at`` None: joined before renewal
    was recorded, by a previous release)."""

    cert_issued_at: str | None = None
    renewed_at: str | None = None
    failures: int = 0
    last_error: str | None = None
    reported_at: str | None = None


@dataclass(frozen=True)
class Lease:
    """Permission for one node to restart its Ray; the head grants one at a time."""

    node: str
    granted_at: float
    expires_at: float


@dataclass(frozen=True)
class Node:
    name: str
    spiffe_id: str
    address: str
    serial: str
    not_after: str
    ports: dict[str, Any]
    status: str
    joined_at: str
    changed_at: str
    renewal: Renewal = Renewal()

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "spiffe_id": self.spiffe_id,
            "address": self.address,
            "serial": self.serial,
            "not_after": self.not_after,
            "ports": self.ports,
            "status": self.status,
            "joined_at": self.joined_at,
            "changed_at": self.changed_at,
            "cert_issued_at": self.renewal.cert_issued_at,
            "renewed_at": self.renewal.renewed_at,
            "renew_failures": self.renewal.failures,
            "renew_error": self.renewal.last_error,
        }

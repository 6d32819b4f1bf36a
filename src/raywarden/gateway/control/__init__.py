"""raywarden's own API, answered by the gateway itself (the routes of ``kind="control"`` in routes.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from raywarden.config import ClusterConfig
from raywarden.errors import ConfigError
from raywarden.gateway.auditsink import AuditSink
from raywarden.gateway.authn import Identity
from raywarden.identity.store import IdentityStore
from raywarden.state import StateDir


@dataclass(frozen=True)
class ControlServices:
    """What control handlers may use: the state dir (CA keys included), the identity store, the audit log."""

    state: StateDir
    config: ClusterConfig
    store: IdentityStore
    audit: AuditSink


@dataclass(frozen=True)
class ControlRequest:
    request_id: str
    source: str
    params: dict[str, str]
    body: bytes | None
    identity: Identity | None  # None on anonymous routes
    # The body as parsed, within bounds (gateway/bodies.py), before the handler runs: a JSON object.
    json: dict[str, Any] = field(default_factory=dict)


@dataclass
class ControlResponse:
    status: int
    body: dict[str, Any]
    # Extra fields for the request's audit record (never secrets: the audit log redacts, but do not rely on it).
    audit: dict[str, Any] = field(default_factory=dict)


ControlHandler = Callable[[ControlRequest], Awaitable[ControlResponse]]


def build_handlers(services: ControlServices) -> dict[str, ControlHandler]:
    """Every control action's handler. A route without a handler fails at start-up, not at request time."""
    import importlib

    handlers: dict[str, ControlHandler] = {}
    for name in HANDLER_MODULES:
        handlers.update(importlib.import_module(f"raywarden.gateway.control.{name}").handlers(services))
    from raywarden.gateway.routes import CONTROL_ROUTES

    missing = {r.action for r in CONTROL_ROUTES} - set(handlers)
    if missing:
        raise ConfigError(f"control routes without a handler: {sorted(missing)}")
    return handlers


# One module per group of control actions, each with a `handlers(services)` function.
HANDLER_MODULES = (
    "trust",
    "identity",
    "nodes",
    "signin",
    "account",
)

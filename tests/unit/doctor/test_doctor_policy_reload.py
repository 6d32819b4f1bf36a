"""`policy.loaded` reads the gateway's `load` at start and every `policy reload` since, and never advises
`down && up` for what a reload does."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from raywarden.audit.cluster import open_cluster_audit
from raywarden.cluster.runstate import RunState
from raywarden.doctor import policy as policy_checks
from raywarden.doctor.context import DoctorContext
from raywarden.policy.engine import PolicyEngine
from raywarden.state import StateDir

pytestmark = pytest.mark.unit


def _ctx(state: StateDir) -> DoctorContext:
    run = RunState.model_construct(ray_pid=1, gateway_pid=2, started_at=dt.datetime.now(dt.timezone.utc).isoformat())
    return DoctorContext(state, state.load_config(), run, True, True, dt.datetime.now(dt.timezone.utc))


def _log(state: StateDir, *records: dict[str, Any]) -> None:
    with open_cluster_audit(state) as audit:
        for record in records:
            audit.append({"kind": "policy", **record})


def _loaded(state: StateDir) -> Any:
    checks = {c.id: c for c in policy_checks.checks(_ctx(state))}
    return checks["policy.loaded"]


def test_a_reload_of_the_files_on_disk_passes(state: StateDir) -> None:
    on_disk = PolicyEngine.for_state(state).version
    _log(
        state,
        {"event": "load", "accepted": True, "version": "old"},
        {"event": "reload", "accepted": True, "version": on_disk},
    )
    check = _loaded(state)
    assert check.status == "pass" and "reloaded" in check.message


def test_files_changed_since_the_last_reload_advise_a_reload(state: StateDir) -> None:
    _log(
        state,
        {"event": "load", "accepted": True, "version": "v1"},
        {"event": "reload", "accepted": True, "version": "v2"},
    )
    check = _loaded(state)
    assert check.status == "warn" and "enforces policy set v2" in check.message
    assert "raywarden policy reload" in (check.fix or "")
    assert "down" not in (check.fix or "") and "restart" not in check.message


def test_a_refused_reload_names_the_set_still_in_force(state: StateDir) -> None:
    on_disk = PolicyEngine.for_state(state).version
    _log(
        state,
        {"event": "load", "accepted": True, "version": on_disk},
        {"event": "reload", "accepted": False, "version": on_disk, "reason": "broken.cedar:3: unexpected token"},
    )
    check = _loaded(state)
    assert check.status == "pass" and "was refused" in check.message and "broken.cedar:3" in check.message


def test_without_a_reload_the_load_at_start_counts(state: StateDir) -> None:
    on_disk = PolicyEngine.for_state(state).version
    _log(state, {"event": "load", "accepted": True, "version": on_disk})
    check = _loaded(state)
    assert check.status == "pass" and "loaded at start" in check.message

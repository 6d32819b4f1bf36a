"""Run every group of checks over one state dir and collect the report."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from raywarden.doctor import audit, certs, clock, files, listeners, policy, ray, separation
from raywarden.doctor.context import DoctorContext, load_context
from raywarden.doctor.report import Check, DoctorReport
from raywarden.state import StateDir

CheckGroup = Callable[[DoctorContext], list[Check]]

# Order of the report: what is on disk first, then what is running, then the record and the clock.
GROUPS: tuple[tuple[str, CheckGroup], ...] = (
    ("files", files.checks),
    ("separation", separation.checks),
    ("certs", certs.checks),
    ("listeners", listeners.checks),
    ("ray", ray.checks),
    ("policy", policy.checks),
    ("audit", audit.checks),
    ("clock", clock.checks),
)


def run_doctor(state: StateDir, *, now: dt.datetime | None = None) -> DoctorReport:
    """Every check against ``state``; raises ``DoctorUnavailable`` only when there is nothing to examine."""
    ctx = load_context(state, now=now)
    results: list[Check] = []
    for _, group in GROUPS:
        results.extend(group(ctx))
    return DoctorReport(str(state.root), ctx.now.isoformat(), ctx.running, tuple(results))

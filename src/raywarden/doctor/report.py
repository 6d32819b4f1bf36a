"""The result model: one Check per finding (pass, warn, fail or skip), collected in a DoctorReport."""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from raywarden.errors import RaywardenError

Status = Literal["pass", "warn", "fail", "skip"]
STATUSES: tuple[Status, ...] = ("fail", "warn", "pass", "skip")
CLUSTER_DOWN = "skipped: cluster is down"


class DoctorUnavailable(RaywardenError):
    """Doctor itself could not run (no state dir, unreadable configuration): exit code 2, not a verdict."""

    exit_code = 2


@dataclass(frozen=True)
class Check:
    """One check's outcome. ``fix`` is a command (or a precise step) whenever the status is warn or fail."""

    id: str  # stable, dotted: "files.keys", "certs.gateway"
    status: Status
    message: str
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def group(self) -> str:
        return self.id.split(".", 1)[0]

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, **asdict(self)}


def passed(check_id: str, message: str, **details: Any) -> Check:
    return Check(check_id, "pass", message, None, details)


def warned(check_id: str, message: str, fix: str, **details: Any) -> Check:
    return Check(check_id, "warn", message, fix, details)


def failed(check_id: str, message: str, fix: str, **details: Any) -> Check:
    return Check(check_id, "fail", message, fix, details)


def skipped(check_id: str, message: str = CLUSTER_DOWN) -> Check:
    return Check(check_id, "skip", message)


def command(*argv: str | Path) -> str:
    """A shell command line with every argument quoted, so a fix can be pasted as printed."""
    return " ".join(shlex.quote(str(a)) for a in argv)


@dataclass(frozen=True)
class DoctorReport:
    state_dir: str
    checked_at: str
    cluster_running: bool
    checks: tuple[Check, ...]

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for c in self.checks if c.status == s) for s in STATUSES}

    def by_status(self, *statuses: Status) -> list[Check]:
        return [c for c in self.checks if c.status in statuses]

    def exit_code(self, *, strict: bool = False) -> int:
        """0 when nothing failed (warnings allowed unless ``strict``), 1 otherwise."""
        bad: Iterable[Status] = ("fail", "warn") if strict else ("fail",)
        return 1 if self.by_status(*bad) else 0

    def get(self, check_id: str) -> Check:
        for check in self.checks:
            if check.id == check_id:
                return check
        raise KeyError(check_id)

    def to_dict(self, *, strict: bool = False) -> dict[str, Any]:
        return {
            "state_dir": self.state_dir,
            "checked_at": self.checked_at,
            "cluster_running": self.cluster_running,
            "strict": strict,
            "ok": self.exit_code(strict=strict) == 0,
            "summary": self.counts(),
            "checks": [c.to_dict() for c in self.checks],
        }

"""Clock sanity: certificates and the audit log both depend on the time being right."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess

from raywarden.doctor.audit import newest_records
from raywarden.doctor.context import DoctorContext
from raywarden.doctor.report import Check, failed, passed, skipped, warned
from raywarden.errors import RaywardenError
from raywarden.pki.certs import load_cert

# Leaves are backdated 5 minutes (pki/ca_keys.py BACKDATE); more than that behind the log is a wrong clock.
TOLERANCE = dt.timedelta(minutes=5)
_SET_CLOCK = "set the system clock (e.g. `timedatectl set-ntp true`, or `chronyc makestep` with chrony)"


def checks(ctx: DoctorContext) -> list[Check]:
    return [_against_state(ctx), _ntp()]


def _against_state(ctx: DoctorContext) -> Check:
    now = ctx.now
    problems = []
    for name, path in (("access CA", ctx.state.access_ca_cert), ("internal CA", ctx.state.internal_ca_cert)):
        try:
            not_before = load_cert(path).not_valid_before_utc
        except RaywardenError:
            continue  # certs.* reports the missing file
        if now < not_before:
            problems.append(
                f"the system clock ({now:%Y-%m-%d %H:%M:%S} UTC) is before the {name} was created "
                f"({not_before:%Y-%m-%d %H:%M:%S} UTC)"
            )
    last = _last_record_time(ctx)
    if last is not None and last - now > TOLERANCE:
        problems.append(
            f"the system clock is {_ago(last - now)} behind the newest audit record ({last:%Y-%m-%d %H:%M:%S} UTC)"
        )
    if problems:
        return failed("clock.sanity", "; ".join(problems), _SET_CLOCK)
    shown = f"; newest audit record {_ago(now - last)} ago" if last is not None else ""
    return passed("clock.sanity", f"the clock is after both CAs' start{shown}")


def _last_record_time(ctx: DoctorContext) -> dt.datetime | None:
    for record in newest_records(ctx):
        stamp = record.get("time")
        if isinstance(stamp, str):
            try:
                return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            except ValueError:
                continue
    return None


def _ago(delta: dt.timedelta) -> str:
    seconds = abs(delta.total_seconds())
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 60:.1f} minutes" if seconds >= 60 else f"{seconds:.0f} s"


def _ntp() -> Check:
    tool = shutil.which("timedatectl")
    if tool is None:
        return skipped("clock.ntp", "skipped: timedatectl is not available")
    try:
        result = subprocess.run(
            [tool, "show", "--property=NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            check=False,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return skipped("clock.ntp", "skipped: timedatectl did not answer")
    value = result.stdout.strip()
    if result.returncode != 0 or value not in ("yes", "no"):
        return skipped("clock.ntp", "skipped: timedatectl cannot read the NTP state here (no systemd)")
    if value == "no":
        return warned(
            "clock.ntp",
            "the system clock is not NTP-synchronised: certificates and audit times drift",
            "timedatectl set-ntp true",
        )
    return passed("clock.ntp", "the system clock is NTP-synchronised")

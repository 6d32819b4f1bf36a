"""The audit log verifies end to end against the state dir's own signing key."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from raywarden.audit import AuditVerificationError, verify_log
from raywarden.audit.keys import load_audit_key, public_key_of
from raywarden.audit.layout import list_segments
from raywarden.doctor.context import DoctorContext
from raywarden.doctor.report import Check, command, failed, passed, warned
from raywarden.errors import RaywardenError


def checks(ctx: DoctorContext) -> list[Check]:
    return [_verify(ctx)]


def _verify(ctx: DoctorContext) -> Check:
    state = ctx.state
    show = command("raywarden", "audit", "verify", "--state-dir", state.root)
    try:
        # The private key in keys/ signs the checkpoints; verifying against it (rather than the public key
        # copied next to the log) also catches a log re-signed with another key.
        key = public_key_of(load_audit_key(state.audit_key))
        report = verify_log(state.audit_dir, public_key=key)
    except AuditVerificationError as exc:
        return failed(
            "audit.verify",
            f"the audit log does not verify: {exc.message}",
            f"{show} names the first bad record; keep the damaged log as evidence and investigate",
        )
    except RaywardenError as exc:
        return failed("audit.verify", f"cannot verify the audit log: {exc.message}", exc.hint or show)
    details = {
        "records": report.records,
        "checkpoints": report.checkpoints,
        "unsigned_records": report.unsigned_records,
    }
    if report.records == 0:
        return warned(
            "audit.verify",
            "the audit log is empty",
            "it is written by `raywarden init`: restore the audit dir from backup",
            **details,
        )
    return passed(
        "audit.verify",
        f"{report.records} records and {report.checkpoints} signed checkpoints verify "
        f"({report.unsigned_records} records after the last checkpoint)",
        **details,
    )


def newest_records(ctx: DoctorContext) -> Iterator[dict[str, Any]]:
    """Records from the newest back (reading is not verifying: damaged lines are skipped here)."""
    audit_dir = ctx.state.audit_dir
    if not audit_dir.is_dir():
        return
    for segment in reversed(list_segments(audit_dir)):
        lines = segment.path.read_bytes().split(b"\n")[:-1]  # the last piece is empty or a torn write
        for line in reversed(lines):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record

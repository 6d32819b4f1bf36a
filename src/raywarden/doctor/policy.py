"""The policy set on disk is valid, and the running gateway loaded that same set."""

from __future__ import annotations

import datetime as dt

from raywarden.audit.record import format_time
from raywarden.doctor.audit import newest_records
from raywarden.doctor.context import DoctorContext
from raywarden.doctor.report import Check, command, failed, passed, skipped, warned
from raywarden.errors import PolicyError
from raywarden.policy.engine import PolicyEngine

# Upper bound on the time between the gateway loading its policies and `up` writing the run file.
GATEWAY_START_S = dt.timedelta(seconds=120)


def checks(ctx: DoctorContext) -> list[Check]:
    try:
        engine = PolicyEngine.for_state(ctx.state)
    except PolicyError as exc:
        # The gateway refuses to start on an invalid set (fail closed), so this is an outage at the next `up`.
        return [
            failed(
                "policy.valid",
                f"the policy set is invalid: {exc.message}",
                f"fix or remove the named file in {ctx.state.policy_dir}, then run "
                + command("raywarden", "doctor", "--state-dir", ctx.state.root)
                + " again",
            ),
            skipped("policy.loaded", "skipped: the policy set on disk is invalid"),
        ]
    own = [s for s in engine.sources if not s.startswith("default/")]
    valid = passed(
        "policy.valid",
        f"policy set {engine.version} is valid against the schema "
        f"(default pack: {len(engine.sources) - len(own)} files; yours: {len(own)})",
        version=engine.version,
        sources=list(engine.sources),
    )
    return [valid, _loaded(ctx, engine.version)]


def _loaded(ctx: DoctorContext, version: str) -> Check:
    if not ctx.gateway_up or ctx.run is None:
        return skipped("policy.loaded", "skipped: the gateway is not running")
    restart = (
        command("raywarden", "down", "--state-dir", ctx.state.root)
        + " && "
        + command("raywarden", "up", "--state-dir", ctx.state.root)
    )
    # `up` records its start time once the gateway answers; the gateway logged its load just before.
    earliest = format_time(dt.datetime.fromisoformat(ctx.run.started_at) - GATEWAY_START_S)
    for record in newest_records(ctx):
        if record.get("kind") == "policy" and record.get("event") == "load":
            if str(record.get("time", "")) < earliest:
                break  # older than this run: no load record for the running gateway
            if not record.get("accepted"):
                return failed(
                    "policy.loaded", f"the gateway's last policy load was refused: {record.get('reason')}", restart
                )
            running = record.get("version")
            if running != version:
                return warned(
                    "policy.loaded",
                    f"the gateway enforces policy set {running}; the files on disk are "
                    f"{version} and take effect on restart",
                    restart,
                    running=running,
                    on_disk=version,
                )
            return passed("policy.loaded", f"the gateway enforces policy set {version}, the one on disk")
    return warned("policy.loaded", "no policy load by the running gateway is recorded in the audit log", restart)

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
    """Which set the running gateway enforces: its last `load` at start or `reload` (SIGHUP) since then."""
    if not ctx.gateway_up or ctx.run is None:
        return skipped("policy.loaded", "skipped: the gateway is not running")
    reload = command("raywarden", "policy", "reload", "--state-dir", ctx.state.root)
    # `up` records its start time once the gateway answers; the gateway logged its load just before.
    earliest = format_time(dt.datetime.fromisoformat(ctx.run.started_at) - GATEWAY_START_S)
    for record in newest_records(ctx):
        if record.get("kind") != "policy" or record.get("event") not in ("load", "reload"):
            continue
        if str(record.get("time", "")) < earliest:
            break  # older than this run: no load record for the running gateway
        event = str(record.get("event"))
        if not record.get("accepted"):
            if event == "load":
                return failed(
                    "policy.loaded",
                    f"the gateway's policy load at start was refused: {record.get('reason')}",
                    f"fix the policy files (`raywarden policy validate`), then {reload}",
                )
        # A refused reload leaves the previous set in force; its record names that version.
        running = record.get("version")
        at = str(record.get("time", "?"))[:19]
        if not record.get("accepted"):
            when = f"a reload at {at} was refused, the previous set stays: {record.get('reason')}"
        else:
            when = f"{'reloaded' if event == 'reload' else 'loaded at start'} {at}"
        if running != version:
            return warned(
                "policy.loaded",
                f"the gateway enforces policy set {running} ({when}); the files on disk are {version}: "
                "they take effect when the gateway reloads them",
                reload,
                running=running,
                on_disk=version,
            )
        return passed("policy.loaded", f"the gateway enforces policy set {version}, the one on disk ({when})")
    return warned("policy.loaded", "no policy load by the running gateway is recorded in the audit log", reload)

"""`audit tail`, `audit export` and `audit actions`: reading the log's records, filtered, for people and SIEMs
(registered on the `audit` command group in cli/audit.py)."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import fnmatch
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from raywarden.audit.reader import RecordFilter, follow, iter_records, last_records, parse_time
from raywarden.cli.common import JsonOption, StateDirOption, console, err_console, print_json, state_dir
from raywarden.cli.principals import PRINCIPAL_FORMS, resolve_principal
from raywarden.errors import ConfigError, UsageError
from raywarden.state import StateDir


class Decision(str, enum.Enum):
    allow = "allow"
    deny = "deny"


PrincipalOption = Annotated[
    str | None,
    typer.Option(
        "--principal",
        help="Only records by or about this principal: alice (a user of this cluster), sa:ci-bot, node:worker-1, "
        "or a full SPIFFE ID.",
    ),
]
ActionOption = Annotated[
    str | None,
    typer.Option(
        "--action", help="Only this action, e.g. jobs.submit; globs work: 'jobs.*' (an unknown action is an error)."
    ),
]
DecisionOption = Annotated[Decision | None, typer.Option("--decision", help="Only allowed or only denied requests.")]
SinceOption = Annotated[
    str | None,
    typer.Option("--since", help="Only records from this time on: RFC 3339, a date, or an age (15m, 2h, 7d)."),
]


@dataclasses.dataclass(frozen=True)
class _Filter(RecordFilter):
    """Also matches the principal inside a local actor, ``local:UID (spiffe://...)``."""

    def matches(self, record: dict[str, Any]) -> bool:
        if super().matches(record):
            return True
        actor = record.get("actor")
        if self.principal is None or not isinstance(actor, str) or not actor.endswith(f"({self.principal})"):
            return False
        return RecordFilter(None, self.action, self.decision, self.since, self.until).matches(record)


def _filter(
    state: StateDir,
    principal: str | None,
    action: str | None,
    decision: Decision | None,
    since: str | None,
    until: str | None = None,
) -> RecordFilter:
    spiffe = None
    if principal is not None:
        spiffe = principal if principal.startswith("local:") else _principal(state, principal)
    return _Filter(
        principal=spiffe,
        action=check_action_glob(action) if action is not None else None,
        decision=decision.value if decision else None,
        since=parse_time(since) if since else None,
        until=parse_time(until) if until else None,
    )


def _principal(state: StateDir, text: str) -> str:
    if text.startswith("spiffe://"):
        return resolve_principal(text, "")
    try:
        trust_domain = state.load_config().trust_domain
    except (ConfigError, OSError):
        raise UsageError(
            f"--principal {text}: a short name needs the cluster's trust domain, and {state.root} holds no cluster",
            hint=f"pass --state-dir, or write the full SPIFFE ID; {PRINCIPAL_FORMS}",
        ) from None
    return resolve_principal(text, trust_domain)


def known_actions() -> list[str]:
    """Every action a record can carry: the Cedar schema's, and those of the gateway's own routes."""
    from raywarden.gateway.routes import ROUTES
    from raywarden.policy.engine import schema_actions

    return sorted(schema_actions() | {r.action for r in ROUTES})


def check_action_glob(pattern: str) -> str:
    """Refuse an action (or glob) that matches no action at all: it would silently show nothing."""
    actions = known_actions()
    if any(fnmatch.fnmatchcase(a, pattern) for a in actions):
        return pattern
    families = sorted({a.rsplit(".", 1)[0] + ".*" for a in actions if "." in a})
    close = difflib.get_close_matches(pattern, families + actions, n=3, cutoff=0.5)
    guess = f"did you mean {', '.join(close)}? " if close else ""
    raise UsageError(
        f"--action {pattern!r} matches no action",
        hint=f"{guess}actions: {', '.join(families)} (`raywarden audit actions` lists them all)",
    )


def tail_command(
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new records as they arrive.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="How many recent records to show first.")] = 20,
    principal: PrincipalOption = None,
    action: ActionOption = None,
    decision: DecisionOption = None,
    since: SinceOption = None,
    state_dir_option: StateDirOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print each record as one JSON line.")] = False,
) -> None:
    """Show the most recent audit records, optionally following new ones (-f)."""
    state = state_dir(state_dir_option)
    flt = _filter(state, principal, action, decision, since)
    _require_log(state.audit_dir)
    for line, record in last_records(state.audit_dir, flt, lines):
        _show(line, record, json_output)
    if not follow_:
        return
    try:
        for line, record in follow(state.audit_dir, flt):
            _show(line, record, json_output)
    except KeyboardInterrupt:
        return


def export_command(
    since: SinceOption = None,
    until: Annotated[str | None, typer.Option("--until", help="Only records before this time.")] = None,
    principal: PrincipalOption = None,
    action: ActionOption = None,
    decision: DecisionOption = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file (0600) instead of stdout.")
    ] = None,
    state_dir_option: StateDirOption = None,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json", help="Print one JSON array of the records (with -o: a JSON summary of what was written)."
        ),
    ] = False,
) -> None:
    """Write records as JSON lines for a SIEM, byte for byte as they are in the log (and as they were hashed)."""
    state = state_dir(state_dir_option)
    flt = _filter(state, principal, action, decision, since, until)
    _require_log(state.audit_dir)
    if output is None and json_output:
        print_json([record for _, record in iter_records(state.audit_dir, flt)])
        return
    if output is None:
        out = sys.stdout.buffer
        for line, _ in iter_records(state.audit_dir, flt):
            out.write(line + b"\n")
        out.flush()
        return
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    count = 0
    with os.fdopen(fd, "wb") as handle:
        for line, _ in iter_records(state.audit_dir, flt):
            handle.write(line + b"\n")
            count += 1
    if json_output:
        print_json({"exported": count, "output": str(output)})
    else:
        err_console.print(f"exported {count} record(s) to {escape(str(output))}")


def actions_command(json_output: JsonOption = False) -> None:
    """List the actions records can carry (what --action accepts, globs included)."""
    actions = known_actions()
    if json_output:
        print_json(actions)
        return
    for name in actions:
        console.print(name, markup=False)


def _require_log(audit_dir: Path) -> None:
    if not audit_dir.is_dir():
        raise ConfigError(f"no audit log in {audit_dir}", hint="check --state-dir; the gateway creates it on start")


def _show(line: bytes, record: dict[str, Any], json_output: bool) -> None:
    if json_output:
        sys.stdout.write(line.decode("ascii") + "\n")
        sys.stdout.flush()
        return
    console.print(format_record(record), soft_wrap=True)


_DECISION_STYLE = {"allow": "green", "deny": "bold red"}


def format_record(record: dict[str, Any]) -> str:
    """One line of Rich markup for a person; every value from the log is escaped (it may be hostile)."""
    decision = record.get("decision")
    parts = [
        f"[dim]{_text(record.get('time'))}[/]",
        f"#{_text(record.get('seq'))}",
        _text(record.get("kind")),
        _text(record.get("principal") or record.get("actor")),
        _text(record.get("action") or record.get("event")),
    ]
    if decision is not None:
        style = _DECISION_STYLE.get(str(decision), "yellow")
        parts.append(f"[{style}]{_text(decision)}[/]")
    for field in ("status", "resource", "request_id"):
        if record.get(field) is not None:
            parts.append(f"{field}={_text(record[field])}")
    if record.get("reason"):
        parts.append(f"[dim]({_text(record['reason'])})[/]")
    return "  ".join(parts)


def _text(value: object) -> str:
    # Records hold client-controlled strings: neutralise both Rich markup and terminal control characters.
    text = "-" if value is None else str(value)
    text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
    return escape(text)

"""`raywarden audit`: verify the tamper-evident log, follow it, and export it for a SIEM."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import fnmatch
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from raywarden.audit import AuditVerificationError, VerifyReport, load_audit_public_key, verify_log
from raywarden.audit.anchor import export_document, load_exported_head
from raywarden.audit.cluster import open_cluster_audit
from raywarden.audit.completeness import Completeness, completeness
from raywarden.audit.keys import audit_public_key_pem, load_audit_key
from raywarden.audit.reader import RecordFilter, follow, iter_records, last_records, parse_time
from raywarden.cli.common import JsonOption, StateDirOption, console, err_console, print_json, state_dir
from raywarden.cli.principals import PRINCIPAL_FORMS, resolve_principal
from raywarden.errors import ConfigError, UsageError
from raywarden.state import StateDir

audit_app = typer.Typer(
    name="audit",
    help="Verify, follow and export the tamper-evident audit log.",
    no_args_is_help=True,
)


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


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def verify_command(
    since_checkpoint: Annotated[
        int | None,
        typer.Option(
            "--since-checkpoint",
            metavar="N",
            min=0,
            help="Start at the signed checkpoint covering N records (for logs whose older files were archived).",
        ),
    ] = None,
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            metavar="FILE",
            help="PEM audit public key to check signatures against, as printed by `raywarden status`. "
            "Default: the key in the state dir.",
        ),
    ] = None,
    against: Annotated[
        Path | None,
        typer.Option(
            "--against",
            metavar="FILE",
            help="A head exported earlier with `audit checkpoint --export` and kept off this host: the record it "
            "ends at must still be in the log with the same chain hash. Detects a rewrite even by someone who "
            "took over this host and its audit key. Its public key is used unless --public-key is given.",
        ),
    ] = None,
    state_dir_option: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Check every record against the hash chain and every checkpoint signature.

    Names modification, deletion, insertion, reordering and truncation with the first bad sequence number.
    Exits 0 only when everything verifies.
    """
    state = state_dir(state_dir_option)
    exported = load_exported_head(against) if against is not None else None
    if public_key is not None:
        key, source = load_audit_public_key(public_key), str(public_key)
    elif exported is not None:
        key, source = exported.public_key, f"{against} (the exported head)"
    elif state.audit_key.is_file():
        key, source = load_audit_key(state.audit_key).public_key(), f"{state.audit_key} (this machine's key)"
    else:
        key, source = None, ""
    try:
        report = verify_log(state.audit_dir, public_key=key, since_checkpoint=since_checkpoint, against=exported)
    except AuditVerificationError as exc:
        if json_output:
            print_json(exc.to_dict())
        raise
    if key is not None:
        report = dataclasses.replace(report, key_source=source)
    found = completeness(state.audit_dir, report.verified_from)
    if json_output:
        print_json({**report.to_dict(), "completeness": found.to_dict()})
        return
    _print_report(report)
    _print_completeness(found)


def _print_completeness(found: Completeness) -> None:
    """Decisions without outcomes: requests in flight when a gateway stopped abruptly (or right now)."""
    if found.without_outcome:
        console.print(
            f"  [yellow]incomplete[/]: {found.without_outcome} of {found.requests} request(s) have a decision "
            "record but no outcome record: they were in flight when a gateway process stopped abruptly "
            "(or are in flight now). This is not tampering: the chain and signatures above verify."
        )
        console.print(f"       first request ids: {', '.join(found.examples[:5])}")
    if found.outcome_only:
        console.print(
            f"  [yellow]{found.outcome_only} outcome record(s) without a decision record[/] "
            "(the gateway never writes these): see `raywarden audit tail`"
        )


def _print_report(report: VerifyReport) -> None:
    last_seq = f"seq {report.verified_from}-{report.records - 1}" if report.records > report.verified_from else "none"
    console.print(
        f"[bold green]audit log verified[/]: {report.records - report.verified_from} records ({last_seq}) "
        f"in {report.files} file(s)"
    )
    if report.last_checkpoint_size is None:
        console.print("  checkpoints: none yet (nothing is signed; the writer signs every N records or T seconds)")
    else:
        console.print(
            f"  checkpoints: {report.checkpoints} valid signature(s); the last covers "
            f"{report.last_checkpoint_size} records, signed {escape(report.last_checkpoint_time or '?')}"
        )
    if report.unsigned_records:
        console.print(
            f"  [yellow]{report.unsigned_records} record(s) after the last checkpoint are chained but "
            "not signed yet[/]: removing them could not be detected"
        )
    if report.against_seq is not None:
        console.print(f"  matches the exported head through seq {report.against_seq}")
    if report.key_id:
        console.print(f"  key: {report.key_id}")
        console.print(f"       from {escape(report.key_source)}")
    if len(report.key_chain) > 1:
        console.print(f"  signed by {len(report.key_chain)} keys in turn (audit key rotations):")
        for index, (key_id, from_size) in enumerate(report.key_chain):
            until = report.key_chain[index + 1][1] if index + 1 < len(report.key_chain) else None
            span = f"records {from_size} to {until - 1}" if until is not None else f"from record {from_size} on"
            console.print(f"    {key_id}  {span}")
    console.print(f"  head: {report.head}")


@audit_app.command("checkpoint")
def checkpoint_command(
    export: Annotated[
        Path | None,
        typer.Option(
            "--export",
            metavar="FILE",
            help="Write the signed head as JSON to FILE (refused if it exists; - for standard output), to keep off "
            "this host; "
            "`audit verify --against FILE` checks the log against it later.",
        ),
    ] = None,
    state_dir_option: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Sign a checkpoint of the log now (run as the cluster's operator, who holds the audit key).

    With --export, the signed head goes to a file. Copy it somewhere root on this host cannot change (another
    machine, write-once storage): a later rewrite of the log, even by someone holding the audit key, no longer
    matches it."""
    state = state_dir(state_dir_option).require()
    config = state.load_config()
    target = None if export is None or str(export) == "-" else export
    if target is not None and target.exists():
        raise ConfigError(
            f"{target} already exists", hint="pass a new file name; an exported head is never overwritten"
        )
    key = load_audit_key(state.audit_key)
    audit = open_cluster_audit(state, config)
    try:
        if export is not None:
            audit.append(
                {"kind": "audit", "event": "checkpoint.export", "actor": f"local:{os.getuid()}", "file": str(export)}
            )
        signed = audit.checkpoint()
    finally:
        audit.close()
    if signed is None:
        raise ConfigError(f"the audit log in {state.audit_dir} has no records to sign", hint="check --state-dir")
    document = export_document(signed, key, trust_domain=config.trust_domain)
    if target is not None:
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot create {target}: {exc.strerror}", hint="pass a new file name") from None
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(document, indent=2) + "\n")
    if json_output or str(export) == "-":
        print_json(document)
        return
    console.print(f"signed checkpoint: {signed.size} records (through seq {signed.size - 1}), head {signed.head.hex()}")
    if target is not None:
        console.print(f"  exported to {escape(str(target))}: keep a copy off this host")
        console.print(f"  check later with: raywarden audit verify --against {escape(str(target))}")


@audit_app.command("rotate-key")
def rotate_key_command(state_dir_option: StateDirOption = None, json_output: JsonOption = False) -> None:
    """Replace the audit signing key (run as the cluster's operator, on the head).

    The old key signs a last checkpoint and hands over to the new key in a line both keys sign; running gateways
    follow. `audit verify` follows the chain of keys from any of them. The old private key is deleted; keep the
    new public key off this host (printed here and by `raywarden status`)."""
    from raywarden.audit.keyrotation import rotate_audit_key
    from raywarden.identity.admin import local_actor

    state = state_dir(state_dir_option).require()
    config = state.load_config()
    rotation = rotate_audit_key(state, config, actor=local_actor())
    public_pem = audit_public_key_pem(state.audit_key)
    info = {
        "from": rotation.from_id,
        "to": rotation.to_id,
        "size": rotation.size,
        "head": rotation.head.hex(),
        "time": rotation.time,
        "public_key": public_pem,
    }
    if json_output:
        print_json(info)
        return
    console.print(f"audit key rotated at record {rotation.size}: {rotation.from_id} -> {rotation.to_id}")
    console.print("  new public key (keep a copy off this host; `audit verify --public-key FILE` accepts either):")
    console.print(public_pem.rstrip(), markup=False)
    console.print("  anchor the handover elsewhere: raywarden audit checkpoint --export FILE")


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


@audit_app.command("tail")
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


@audit_app.command("export")
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


@audit_app.command("actions")
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

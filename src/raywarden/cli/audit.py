"""`raywarden audit`: verify the tamper-evident log, follow it, and export it for a SIEM."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from raywarden.audit import AuditVerificationError, VerifyReport, load_audit_public_key, verify_log
from raywarden.audit.anchor import export_document, load_exported_head
from raywarden.audit.cluster import open_cluster_audit
from raywarden.audit.completeness import Completeness, completeness
from raywarden.audit.keys import audit_public_key_pem, load_audit_key
from raywarden.cli.audit_records import actions_command, export_command, tail_command
from raywarden.cli.common import JsonOption, StateDirOption, console, print_json, state_dir
from raywarden.errors import ConfigError

audit_app = typer.Typer(
    name="audit",
    help="Verify, follow and export the tamper-evident audit log.",
    no_args_is_help=True,
)


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


# Reading records: tail, export and the actions --action accepts (cli/audit_records.py).
audit_app.command("tail")(tail_command)
audit_app.command("export")(export_command)
audit_app.command("actions")(actions_command)

"""`raywarden ca`: the cluster's two CAs, and rotating them with an overlap (on the head host)."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Annotated, Any

import typer
from rich.markup import escape

from raywarden.cli.common import JsonOption, StateDirOption, console, err_console, print_json, print_next, state_dir
from raywarden.errors import UsageError

ca_app = typer.Typer(
    name="ca",
    help="The access and internal CAs: status, and rotation with an overlap in which both are trusted.",
    no_args_is_help=True,
)


class CaRole(str, enum.Enum):
    access = "access"
    internal = "internal"


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, option: str) -> dt.timedelta:
    """``90s``, ``15m``, ``12h``, ``7d``, ``2w`` (a number alone is seconds)."""
    value = text.strip().lower()
    unit = value[-1] if value and value[-1] in _UNITS else "s"
    number = value[:-1] if unit != "s" or value.endswith("s") else value
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        raise UsageError(f"{option} {text!r} is not a duration", hint="for example 30m, 12h, 7d or 2w") from None
    if not 0 < seconds < 10 * 365 * 86400:
        raise UsageError(f"{option} {text!r} must be positive and under 10 years")
    return dt.timedelta(seconds=seconds)


def register(app: typer.Typer) -> None:
    app.add_typer(ca_app, name="ca")


@ca_app.command("status")
def status_command(state_dir_option: StateDirOption = None, json_output: JsonOption = False) -> None:
    """Both CAs (fingerprints, expiry), any rotation under way and what still depends on the old CA."""
    from raywarden.pki.rollout import full_status

    info = full_status(state_dir(state_dir_option).require())
    if json_output:
        print_json(info)
        return
    for role in ("access", "internal"):
        entry = info[role]
        console.print(f"[bold]{role} CA[/]  sha256 {entry['current']['sha256']}")
        console.print(f"  valid until {entry['current']['not_after']}")
        if entry["previous"]:
            console.print(f"  previous (still trusted)  sha256 {entry['previous']['sha256']}")
        if entry["next"]:
            console.print(f"  published successor (signs nothing yet)  sha256 {entry['next']['sha256']}")
        rotation = entry["rotation"]
        if rotation is None:
            console.print("  no rotation under way")
            continue
        overdue = " [yellow](overdue)[/]" if rotation["overdue"] else ""
        console.print(
            f"  rotation: {rotation['phase']} since {rotation['published_at']}; planned end "
            f"{rotation['overlap_until']}{overdue}"
        )
        _print_waiting(entry.get("waiting_for") or [])
        ending = "--finish" if rotation["phase"] == "overlap" else "(again, to make it current)"
        console.print(f"  next: raywarden ca rotate {role} {ending}", markup=False)


def _print_waiting(waiting: list[dict[str, Any]]) -> None:
    if not waiting:
        console.print("  nothing depends on the old CA any more")
        return
    console.print(f"  [yellow]{len(waiting)} still depend on the old CA[/]:")
    for item in waiting:
        until = f" (until {item['until']})" if item["until"] else ""
        console.print(f"    {escape(item['what'])}{escape(until)}")


@ca_app.command("rotate")
def rotate_command(
    role: Annotated[CaRole, typer.Argument(help="Which CA: access (people, services, gateway) or internal (Ray).")],
    overlap: Annotated[
        str,
        typer.Option(
            "--overlap",
            help="Planned length of the overlap in which both CAs are trusted, e.g. 7d (at least the longest "
            "certificate lifetime plus any service account's renewal grace). `ca status` warns once it is over.",
        ),
    ] = "7d",
    finish: Annotated[
        bool, typer.Option("--finish", help="End the overlap: drop the old CA everywhere and destroy its key.")
    ] = False,
    abort: Annotated[
        bool, typer.Option("--abort", help="Withdraw a published internal CA that has signed nothing yet.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Go ahead although certificates or Ray processes still depend on the old CA."),
    ] = False,
    state_dir_option: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Rotate a CA with an overlap in which both the old and the new one are trusted.

    access: the new CA signs people's and service accounts' certificates from now on; clients and nodes learn it
    through the CA they pin, from a rollover statement both CAs sign. The gateway keeps its certificate from the
    old CA until `--finish`. internal: the new CA is first published in Ray's CA bundle, signing nothing; run
    the command again once every Ray process has restarted, to make it current. Then `--finish` drops the old
    CA (and moves the gateway to the new access CA) once nothing depends on it any more."""
    from raywarden.identity.admin import local_actor
    from raywarden.pki.rollout import rotate

    if finish and abort:
        raise UsageError("--finish and --abort exclude each other", hint="`raywarden ca rotate --help`")
    state = state_dir(state_dir_option).require()
    config = state.load_config()
    length = parse_duration(overlap, "--overlap")
    steps = rotate(
        state, config, role.value, actor=local_actor(), overlap=length, finish=finish, abort=abort, force=force
    )
    if json_output:
        print_json({"steps": [s.to_dict() for s in steps]})
        return
    for step in steps:
        _print_step(step.to_dict())
    last = steps[-1]
    if last.event == "ca.rotate.start":
        print_next(["raywarden", "ca", "status"], ["raywarden", "ca", "rotate", role.value, "--finish"])
    elif last.event == "ca.publish":
        print_next(["raywarden", "ca", "status"], ["raywarden", "ca", "rotate", role.value])


_TITLES = {
    "ca.publish": "new {role} CA published (trusted by Ray processes started from now, signing nothing yet)",
    "ca.rotate.start": "{role} CA rotation started: the new CA signs from now on, both are trusted",
    "ca.rotate.finish": "{role} CA rotation finished: the old CA is dropped and its key destroyed",
    "ca.publish.withdraw": "the published {role} CA is withdrawn; the current one stays",
}


def _print_step(step: dict[str, Any]) -> None:
    console.print(f"[bold]{_TITLES[step['event']].format(role=step['role'])}[/]")
    console.print(f"  old sha256 {step['old_sha256']}", markup=False)
    console.print(f"  new sha256 {step['new_sha256']}", markup=False)
    if step["overlap_until"] and step["event"] != "ca.rotate.finish":
        console.print(f"  planned end of the overlap: {step['overlap_until']}", markup=False)
    for note in step["notes"]:
        console.print(f"  {escape(note)}")
    if step["waiting_for"]:
        err_console.print("  [yellow]still on the old CA:[/]")
        for what in step["waiting_for"]:
            err_console.print(f"    {escape(what)}")
    if step["event"] == "ca.rotate.start" and step["role"] == "access":
        console.print(
            "  clients pinning the old CA learn the new one on their next command; new logins and joins may pin "
            "either fingerprint"
        )

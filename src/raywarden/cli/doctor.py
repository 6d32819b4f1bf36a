"""`raywarden doctor`: the local deployment's security posture, each check with a fix."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from raywarden.cli.common import JsonOption, StateDirOption, console, print_json, state_dir
from raywarden.doctor import DoctorReport, run_doctor

HELP = """Check this machine's raywarden deployment and say how to fix what is wrong.

\b
Checks (each passes, warns or fails with a fix; some are skipped while the cluster is down):
  files      keys and Ray's token 0600, folders 0700, everything owned by you
  certs      CA and leaf expiry (warn 14 days before for CAs, 7 for leaves), chains, key match,
             the local admin profile's client certificate
  listeners  every non-loopback listener is the gateway (TLS, refusing anonymous requests)
             or a Ray port behind this cluster's nftables table
  ray        Ray's version and known CVEs, token auth enforced, mutual TLS on
  policy     the policy set on disk is valid, and the gateway enforces that same set
  audit      the audit log verifies against the state dir's signing key
  clock      the clock is after the CAs' start and not behind the audit log; NTP sync

Read-only: doctor changes nothing and sends requests to loopback only.

\b
Exit codes: 0 no failure (warnings allowed; --strict makes them fail); 1 at least one
failure; 2 doctor could not run (no state dir, unreadable configuration).
"""

_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def register(app: typer.Typer) -> None:
    app.command("doctor", help=HELP)(doctor)


def doctor(
    state: StateDirOption = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 on warnings too.")] = False,
    json_output: JsonOption = False,
) -> None:
    report = run_doctor(state_dir(state))
    if json_output:
        print_json(report.to_dict(strict=strict))
    else:
        _print(report, strict=strict)
    code = report.exit_code(strict=strict)
    if code:
        raise typer.Exit(code=code)


def _print(report: DoctorReport, *, strict: bool) -> None:
    table = Table(title=f"raywarden doctor: {escape(report.state_dir)}", show_lines=False, expand=False)
    table.add_column("", no_wrap=True)
    table.add_column("Check", no_wrap=True)
    table.add_column("Result", overflow="fold")
    for check in report.checks:
        table.add_row(f"[{_STYLE[check.status]}]{check.status}[/]", check.id, escape(check.message))
    console.print(table)
    to_fix = report.by_status("fail", "warn")
    if to_fix:
        console.print("[bold]Fixes[/]")
        for check in to_fix:
            console.print(f"  [{_STYLE[check.status]}]{check.id}[/]: {escape(check.fix or '')}", soft_wrap=True)
    counts = report.counts()
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    verdict = "[green]OK[/]" if report.exit_code(strict=strict) == 0 else "[bold red]NOT OK[/]"
    console.print(f"{verdict}: {summary}" + (" (--strict: warnings fail)" if strict else ""))

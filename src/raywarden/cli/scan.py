"""`raywarden scan`: read-only checks of Ray endpoints, printed as a table, JSON or SARIF."""

from __future__ import annotations

import asyncio
import json
import textwrap
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from raywarden.cli.common import JsonOption, console, err_console, print_json, print_rows
from raywarden.files import write_private
from raywarden.scan.errors import ScanError
from raywarden.scan.findings import ScanResult
from raywarden.scan.runner import check_limits, run_plan
from raywarden.scan.sarif import to_sarif
from raywarden.scan.targets import DEFAULT_MAX_HOSTS, DEFAULT_PORTS, parse_ports, plan_scan
from raywarden.scan.wire import USER_AGENT

_HELP = f"""Check Ray endpoints for known exposures, without changing anything on them.

TARGET is HOST, HOST:PORT, [IPV6]:PORT, http(s)://HOST[:PORT][/PATH] or a CIDR range. A target
without a port is checked on each of --ports (default: {", ".join(map(str, DEFAULT_PORTS))}:
dashboard, GCS, Ray Client, Serve, dashboard agent; Ray's metrics ports are random, name them with
--ports). Scan only hosts you are allowed to test.

\b
Exactly what is sent to each port, and nothing else:
  1. a TCP connect, closed at once;
  2. a TLS ClientHello (ALPN h2, http/1.1) without a client certificate, then close
     (skipped for http:// targets); with --ca, a second one that verifies the certificate;
  3. if the port speaks HTTP/1.x, six GET requests, each on its own connection:
     /api/version, /api/authentication_mode, /api/jobs/, /metrics, /-/routes,
     /api/job_agent/jobs/raywarden-scan-probe/logs  (a job id that cannot exist);
     headers: Host, User-Agent: {USER_AGENT}, Accept: */*, Connection: close;
     no body, credentials, cookies, Origin or Referer; at most 1 MiB of each answer is read;
  4. if it speaks HTTP/2 (gRPC), the HTTP/2 client preface and an empty SETTINGS frame,
     read the first frame header, close. No stream is opened and no RPC is called.

\b
Never sent: POST, PUT or DELETE; job submissions; URLs for the server to fetch; path
traversal; anything that starts, stops or changes work on the cluster.

\b
Exit codes: 0 no finding at or above --fail-on; 1 findings at or above --fail-on;
2 scan error: a malformed target or option, a range above --max-hosts, a host name that does
not resolve, or no port answering on any target (so an empty result never reads as "clean").
"""


# Typer renders help with Rich markup, where "[IPV6]" or "[/PATH]" would be read as style tags.
HELP = _HELP.replace("[", "\\[")


class FailOn(str, Enum):
    critical = "critical"
    high = "high"
    medium = "medium"
    low = "low"
    info = "info"
    none = "none"


_STYLE = {"critical": "bold white on red", "high": "bold red", "medium": "yellow", "low": "cyan", "info": "dim"}


def _paragraph(text: str, indent: int = 2) -> None:
    """Plain text wrapped to the console's width (80 outside a terminal), every line indented."""
    width = max(40, console.width) - indent
    pad = " " * indent
    wrapped = textwrap.fill(
        text, width, initial_indent=pad, subsequent_indent=pad + "  ", break_long_words=False, break_on_hyphens=False
    )
    console.print(wrapped, markup=False)


def _print_findings(result: ScanResult) -> None:
    """Findings as short paragraphs (header line, then indented text that wraps), readable at 80 columns."""
    if result.findings:
        console.print(f"[bold]raywarden scan: {len(result.findings)} finding(s)[/]")
    for f in result.findings:
        cves = f"  {', '.join(f.cves)}" if f.cves else ""
        # Targets and evidence carry text chosen by the scanned server: escape it so it cannot inject markup.
        console.print()
        console.print(f"[{_STYLE[f.severity]}]{f.severity.upper()}[/]  [bold]{f.id}[/]  {escape(f.target)}")
        _paragraph(f.title + cves)
        _paragraph(f"evidence: {f.evidence}")
    if result.findings:
        console.print()
        console.print("[bold]Fixes[/]")
        for rule_id in dict.fromkeys(f.id for f in result.findings):
            fix = next(f.fix for f in result.findings if f.id == rule_id)
            _paragraph(f"{rule_id}: {fix}")
    open_endpoints = [e for e in result.endpoints if e.state == "open"]
    if open_endpoints:
        lines = [
            [escape(e.host), str(e.port), escape(e.service), {True: "yes", False: "no", None: "?"}[e.tls]]
            for e in open_endpoints
        ]
        console.print()
        print_rows(("Host", "Port", "Service", "TLS"), lines, wrap=("Service",), title="Open ports")
    counts = ", ".join(f"{n} {s}" for s, n in result.counts().items() if n) or "no findings"
    console.print(f"{len(result.endpoints)} endpoints probed, {result.reachable} open; {counts}.")
    for err in result.errors:
        err_console.print(f"[yellow]warning:[/] {escape(err)}", soft_wrap=False)


def register(app: typer.Typer) -> None:
    """Add the ``scan`` command to ``app``."""

    @app.command("scan", help=HELP, no_args_is_help=True)
    def scan(
        targets: Annotated[
            list[str], typer.Argument(metavar="TARGET", help="Hosts, URLs or CIDR ranges.", show_default=False)
        ],
        ports: Annotated[
            list[str] | None,
            typer.Option(
                "--ports",
                "-p",
                metavar="PORTS",
                help="Ports for targets without one: comma list, ranges (9000-9002), 'default' for "
                "Ray's ports. Repeatable. Replaces the default list.",
                show_default=False,
            ),
        ] = None,
        timeout: Annotated[float, typer.Option(help="Seconds per connect, handshake or request.")] = 3.0,
        concurrency: Annotated[int, typer.Option(help="Endpoints probed at the same time (1-1024).")] = 64,
        max_hosts: Annotated[int, typer.Option(help="Refuse targets covering more hosts than this.")] = (
            DEFAULT_MAX_HOSTS
        ),
        fail_on: Annotated[
            FailOn, typer.Option(help="Exit 1 when a finding is at or above this severity.", case_sensitive=False)
        ] = FailOn.high,
        sarif: Annotated[
            Path | None,
            typer.Option(metavar="FILE", help="Also write SARIF 2.1.0 to FILE.", dir_okay=False, show_default=False),
        ] = None,
        ca: Annotated[
            Path | None,
            typer.Option(
                metavar="FILE",
                help="CA bundle (PEM) to verify TLS certificates against; without it they are not verified.",
                exists=True,
                dir_okay=False,
                readable=True,
                show_default=False,
            ),
        ] = None,
        as_json: JsonOption = False,
    ) -> None:
        check_limits(timeout, concurrency)
        if max_hosts < 1:
            raise ScanError(f"--max-hosts {max_hosts} must be at least 1", hint="e.g. --max-hosts 256")
        port_list = parse_ports(ports) if ports else None
        plan = plan_scan(targets, port_list, max_hosts=max_hosts)
        show_progress = not as_json and any(spec.network is not None for spec in plan.specs)

        async def run() -> ScanResult:
            if not show_progress:
                return await run_plan(plan, timeout=timeout, concurrency=concurrency, ca=ca)
            with Progress(
                TextColumn("scanning"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err_console,
                transient=True,
            ) as bar:
                task = bar.add_task("scan", total=plan.endpoint_count)
                return await run_plan(
                    plan,
                    timeout=timeout,
                    concurrency=concurrency,
                    ca=ca,
                    progress=lambda done, total: bar.update(task, completed=done),
                )

        result = asyncio.run(run())
        failing = [] if fail_on is FailOn.none else result.failing(fail_on.value)

        if sarif is not None:
            write_private(sarif, (json.dumps(to_sarif(result), indent=2) + "\n").encode())
        if as_json:
            data = result.to_dict()
            data["fail_on"] = fail_on.value
            data["failing"] = len(failing)
            print_json(data)
        else:
            _print_findings(result)

        if failing:
            raise typer.Exit(code=1)
        if result.reachable == 0:
            raise ScanError(
                f"no port answered on any of the {len(result.endpoints)} endpoints probed",
                hint="check the address and --ports, and that a firewall lets this host connect; "
                "an unreachable target is not reported as clean",
            )
        if result.errors:
            raise ScanError(
                f"the scan is incomplete: {len(result.errors)} endpoint(s) could not be checked",
                hint="see the warnings above or the 'errors' list in --json output",
            )

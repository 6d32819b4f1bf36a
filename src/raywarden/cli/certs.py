"""`cert status` and `cert rotate`: the cluster's certificates, when each expires and how it is renewed."""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Annotated, Any

import typer
from rich.markup import escape

from raywarden.audit.cluster import open_cluster_audit
from raywarden.cli.common import (
    JsonOption,
    StateDirOption,
    WideOption,
    console,
    err_console,
    print_json,
    print_rows,
    state_dir,
)
from raywarden.cli.running_jobs import running_jobs
from raywarden.cluster import headcert, inventory
from raywarden.cluster.agent import agent_status
from raywarden.cluster.certlife import describe_left
from raywarden.cluster.nodestate import NodeState
from raywarden.cluster.setup import issue_gateway_certificate
from raywarden.durations import parse_duration
from raywarden.errors import ClusterError, UsageError
from raywarden.gateway.renewal import renewal_status
from raywarden.pki.certs import serial_hex
from raywarden.pki.trust import gateway_issuer
from raywarden.state import StateDir

cert_app = typer.Typer(help="The cluster's certificates: expiry, renewal, rotation.", no_args_is_help=True)
HEALTH_COLOUR = {"ok": "green", "renewal due": "yellow", "expiring": "yellow", "overdue": "red", "expired": "red"}
JOB_POLL_S = 5.0


def register(app: typer.Typer) -> None:
    app.add_typer(cert_app, name="cert")


@cert_app.command("status")
def status(state: StateDirOption = None, wide: WideOption = False, json_output: JsonOption = False) -> None:
    """Every certificate of this cluster (on a head) or of this node (on a worker): serial, identity, expiry,
    the next automatic renewal (or how it is renewed by hand) and whether it is on track.

    Exits 1 when a certificate is expired, overdue for renewal, or unreadable."""
    root = state_dir(state).root
    node = NodeState(root)
    if node.exists():
        entries = inventory.worker_inventory(node)
        extra: dict[str, Any] = {"role": "worker", "agent": agent_status(node)}
    else:
        target = state_dir(state).require()
        entries = inventory.head_inventory(target, target.load_config())
        extra = {"role": "head", "gateway_renewal": renewal_status(target)}
    bad = [e for e in entries if e.health in ("expired", "overdue", "unreadable")]
    if json_output:
        print_json({**extra, "certificates": [e.public() for e in entries], "ok": not bad})
    else:
        _print(entries, wide)
        _print_extra(extra)
    if bad:
        raise typer.Exit(1)


def _print(entries: list[inventory.CertEntry], wide: bool) -> None:
    rows = []
    for e in entries:
        colour = HEALTH_COLOUR.get(e.health, "red")
        left = describe_left(dt.timedelta(seconds=e.seconds_left)) if e.not_after else ""
        label = e.kind if e.name in (e.kind, "current", "head", "gateway") else f"{e.kind} {e.name}"
        rows.append(
            [
                escape(label),
                escape(e.serial),
                escape(e.not_after[:19].replace("T", " ")),
                escape(left),
                escape(e.renew_at[:19].replace("T", " ") if e.renew_at else e.renewal),
                f"[{colour}]{escape(e.health)}[/]",
            ]
        )
    print_rows(
        ("certificate", "serial", "expires (UTC)", "left", "renews (UTC) / how", "state"),
        rows,
        wrap=("renews (UTC) / how",),
        wide=wide,
    )
    for e in entries:
        if e.health != "ok" or "failed" in e.note:
            console.print(f"  {e.kind} {e.name}: {e.health}; {e.note}; renewed {e.renewal}", markup=False)


def _print_extra(extra: dict[str, Any]) -> None:
    renewal = extra.get("gateway_renewal")
    if renewal and not renewal.get("accepted"):
        err_console.print(
            f"[yellow]gateway certificate renewal failing[/] ({renewal.get('failures')} in a row): "
            f"{escape(str(renewal.get('reason')))}"
        )
    agent = extra.get("agent")
    if extra.get("role") == "worker":
        if agent is None:
            err_console.print(
                "[red]no node agent status[/]: the agent may not be running (`raywarden down`, join again)"
            )
        else:
            console.print(f"  node agent pid {agent['pid']}: {agent['state']}", markup=False)
            if agent.get("failures"):
                err_console.print(
                    f"[yellow]{agent['failures']} failure(s) in a row:[/] {escape(str(agent['last_error']))}"
                )


@cert_app.command("rotate")
def rotate(
    head: Annotated[
        bool, typer.Option("--head", help="Issue a new head node certificate and restart the head's Ray with it.")
    ] = False,
    gateway: Annotated[
        bool, typer.Option("--gateway", help="Issue a new gateway certificate now; the gateway swaps it in.")
    ] = False,
    wait_jobs: Annotated[
        str,
        typer.Option(
            metavar="DURATION",
            help="With --head: wait this long for running jobs to end before refusing (e.g. 2h).",
        ),
    ] = "0s",
    force: Annotated[
        bool, typer.Option("--force", help="With --head: restart even while jobs run (they are stopped).")
    ] = False,
    state: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Rotate one of the head's certificates at a time you choose.

    --head: Ray reads the head's certificate only when it starts, so the head's Ray restarts (seconds) on the
    same ports; the gateway stays up, and worker nodes rejoin by themselves. Jobs running on the cluster end
    with the restart: without --force this waits up to --wait-jobs for them, then refuses.

    --gateway: renewal happens automatically at 2/3 of the certificate's life; this does it now (after
    adding a name with --gateway-host at init, say). The running gateway serves it to new connections."""
    if head == gateway:
        raise UsageError("pass exactly one of --head and --gateway", hint="`raywarden cert rotate --help`")
    target = state_dir(state).require()
    try:
        wait = parse_duration(wait_jobs)
    except ValueError as exc:
        raise UsageError(f"--wait-jobs: {exc}", hint="for example --wait-jobs 2h") from None
    out = err_console if json_output else console
    if gateway:
        config = target.load_config()
        cert = issue_gateway_certificate(target, config, gateway_issuer(target, config.trust_domain))
        result: dict[str, Any] = {"serial": serial_hex(cert), "not_after": cert.not_valid_after_utc.isoformat()}
        _audit_gateway(target, result)
        if json_output:
            print_json(result)
        else:
            console.print(
                f"New gateway certificate {result['serial']} until {result['not_after']}; new connections get it."
            )
        return
    if force:
        ended = [j.submission_id for j in running_jobs(target)]
    else:
        _wait_for_jobs(target, wait)
        ended = []
    with out.status("rotating the head certificate") as spinner:
        result = headcert.rotate_head(target, jobs_ended=ended, progress=lambda m: spinner.update(m))
    if json_output:
        print_json(result)
        return
    console.print(f"Head certificate {result['serial']} replaces {result['old_serial']}, until {result['not_after']}.")
    if result["ray_restarted"]:
        console.print(
            f"  Ray restarted (pid {result['ray_pid']}); the gateway kept running (pid {result['gateway_pid']})."
        )
        console.print("  Worker nodes rejoin by themselves (their node agents restart their Ray).")
    else:
        console.print("  The head's Ray is not running: `raywarden up` starts it with this certificate.")
    if ended:
        console.print(f"  Jobs stopped by the restart: {', '.join(ended)}", markup=False)


def _wait_for_jobs(target: StateDir, wait: dt.timedelta) -> None:
    """Wait up to ``wait`` for the running jobs to end; refuse if some still run."""
    deadline = time.monotonic() + wait.total_seconds()
    jobs = running_jobs(target)
    if jobs and wait:
        err_console.print(f"Waiting up to {describe_left(wait)} for {len(jobs)} running job(s) to end...")
    while jobs and time.monotonic() < deadline:
        time.sleep(JOB_POLL_S)
        jobs = running_jobs(target)
    if jobs:
        names = ", ".join(j.submission_id for j in jobs)
        raise ClusterError(
            f"not restarting the head's Ray: {len(jobs)} job(s) are running ({names}); the restart would end them",
            hint="wait for them (--wait-jobs 2h), stop them (`raywarden job stop ID`), or pass --force",
        )


def _audit_gateway(target: StateDir, result: dict[str, Any]) -> None:
    audit = open_cluster_audit(target)
    try:
        audit.append(
            {"kind": "tls", "event": "gateway.cert.renew", "accepted": True, "actor": f"local:{os.getuid()}", **result}
        )
    finally:
        audit.close()

"""`init`, `up`, `down`, `status`: one cluster's lifecycle on this machine."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.markup import escape

from raywarden.cli.common import (
    FIRST_JOB,
    JsonOption,
    StateDirOption,
    console,
    err_console,
    print_json,
    print_next,
    state_dir,
)
from raywarden.cluster import lifecycle, report, worker
from raywarden.cluster.setup import init_state
from raywarden.cluster.worker import NodeState
from raywarden.config import DEFAULT_LISTEN, DEFAULT_TRUST_DOMAIN, ClusterConfig, Listen
from raywarden.durations import parse_duration
from raywarden.errors import ClusterError, RaywardenError, UsageError
from raywarden.state import StateDir


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)


def init(
    state: StateDirOption = None,
    trust_domain: Annotated[str, typer.Option(help="SPIFFE trust domain of this cluster.")] = DEFAULT_TRUST_DOMAIN,
    listen: Annotated[str, typer.Option(help="Address the gateway will listen on (HOST:PORT).")] = DEFAULT_LISTEN,
    gateway_host: Annotated[
        list[str] | None,
        typer.Option("--gateway-host", help="Extra DNS name or IP the gateway certificate is valid for (repeatable)."),
    ] = None,
    admin: Annotated[str, typer.Option(help="Name of the first administrator.")] = "admin",
    profile: Annotated[
        str | None, typer.Option(help="Name of the admin's client profile (default: the trust domain).")
    ] = None,
    user_cert_ttl: Annotated[
        str, typer.Option(metavar="DURATION", help="Lifetime of people's and service accounts' certificates.")
    ] = "12h",
    gateway_cert_ttl: Annotated[
        str,
        typer.Option(
            metavar="DURATION", help="Lifetime of the gateway's certificate; renewed in place at 2/3 of its life."
        ),
    ] = "90d",
    node_cert_ttl: Annotated[
        str,
        typer.Option(
            metavar="DURATION",
            help="Lifetime of worker nodes' certificates; each node renews at 2/3 of its life and restarts its Ray "
            "(drained first, one node at a time).",
        ),
    ] = "30d",
    head_cert_ttl: Annotated[
        str,
        typer.Option(
            metavar="DURATION",
            help="Lifetime of the head node's certificate, issued at every `up`: the longest the cluster may run "
            "without a restart of the head (`raywarden cert rotate --head`). At least 1d.",
        ),
    ] = "365d",
    node_drain_timeout: Annotated[
        str,
        typer.Option(
            metavar="DURATION",
            help="How long running tasks get when a worker is drained for its new certificate (at most a third "
            "of the node certificate's life is used).",
        ),
    ] = "10m",
    json_output: JsonOption = False,
) -> None:
    """Create a cluster: two CAs, the Ray token, gateway and node certificates, audit key, and an admin profile.

    Durations are a number and a unit, combined as needed: 90s, 2m, 12h, 30d, 1w, 1d12h. Certificate
    lifetimes are at least 2m (the head's at least 1d)."""
    lifetimes = {
        "user_cert_ttl": ("--user-cert-ttl", user_cert_ttl),
        "gateway_cert_ttl": ("--gateway-cert-ttl", gateway_cert_ttl),
        "node_cert_ttl": ("--node-cert-ttl", node_cert_ttl),
        "head_cert_ttl": ("--head-cert-ttl", head_cert_ttl),
        "node_drain_timeout": ("--node-drain-timeout", node_drain_timeout),
    }
    durations = {}
    for field, (flag, text) in lifetimes.items():
        try:
            durations[field] = parse_duration(text)
        except ValueError as exc:
            raise UsageError(f"{flag}: {exc}", hint=f"for example {flag} {_EXAMPLES[field]}") from None
    try:
        config = ClusterConfig.model_validate(
            {
                "trust_domain": trust_domain,
                "listen": Listen.parse(listen),
                "gateway_hosts": list(gateway_host or []),
                **durations,
            }
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        flag = lifetimes[field][0] if field in lifetimes else f"--{field.replace('_', '-')}"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise UsageError(f"{flag}: {message}", hint="see `raywarden init --help`") from None
    result = init_state(state_dir(state), config, admin_name=admin, profile_name=profile or trust_domain)
    if json_output:
        print_json(dataclasses.asdict(result))
        return
    console.print(f"Initialised cluster [bold]{result.trust_domain}[/] in {result.state_dir}")
    console.print(f"  admin identity:       {result.admin} (profile '{result.profile}', now current)")
    console.print(f"  gateway URL:          {result.gateway_url}")
    console.print(f"  access CA SHA-256:    {result.access_ca_fingerprint}")
    console.print(f"  internal CA SHA-256:  {result.internal_ca_fingerprint}")
    print_next(["raywarden", "up", *_state_args(state)])


_EXAMPLES = {
    "user_cert_ttl": "12h",
    "gateway_cert_ttl": "90d",
    "node_cert_ttl": "30d",
    "head_cert_ttl": "365d",
    "node_drain_timeout": "10m",
}


def up(
    state: StateDirOption = None,
    listen: Annotated[
        str | None, typer.Option(help="Gateway address HOST:PORT (default: the one given at init, 127.0.0.1:8443).")
    ] = None,
    num_cpus: Annotated[int | None, typer.Option(min=1, help="CPUs Ray may use on this node.")] = None,
    node_ip: Annotated[
        str | None,
        typer.Option(
            help="Multi-node mode: the head's IPv4 address on the network workers use. Ray then listens there, "
            "behind nftables rules that admit only enrolled nodes (needs root). Default: single node, "
            "everything on loopback."
        ),
    ] = None,
    ray_user: Annotated[
        str | None,
        typer.Option(
            "--ray-user",
            metavar="USER",
            help="As root: the unprivileged OS user Ray, and so every job, runs as; it must exist. Default: "
            "raywarden-ray, a system user without login, created when missing.",
        ),
    ] = None,
    shared_os_user: Annotated[
        bool,
        typer.Option(
            "--shared-os-user",
            help="Without root: run Ray as your own OS user and still allow more than one principal. This gives up "
            "privilege separation: any job can then read the control plane's keys (CA keys, signing keys, the "
            "identity store, the audit log) and so act as any identity, admin included. Without this flag, a "
            "cluster started without root admits its one admin only.",
        ),
    ] = False,
    serve_listen: Annotated[
        str | None,
        typer.Option(
            "--serve-listen",
            metavar="HOST:PORT",
            help="Also start Ray Serve, its proxy on loopback only, behind a second HTTPS listener of the gateway "
            "at HOST:PORT: every call is authenticated (API keys, tokens, certificates), authorized per "
            "application and audited (docs/serve.md). Kept for later `up`s.",
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Start the Ray head (mutual TLS, token auth, loopback only unless --node-ip) and the gateway in front of it.

    As root, Ray and every job run as an unprivileged OS user of their own (--ray-user), which cannot read or
    write the control plane's state."""
    target = state_dir(state).require()
    started = time.monotonic()
    out = err_console if json_output else console
    with out.status("starting") as spinner:
        run = lifecycle.up(
            target,
            listen=Listen.parse(listen) if listen else None,
            num_cpus=num_cpus,
            node_ip=node_ip,
            ray_user=ray_user,
            shared_os_user=shared_os_user,
            serve_listen=Listen.parse(serve_listen) if serve_listen else None,
            progress=lambda msg: spinner.update(msg),
        )
    elapsed = time.monotonic() - started
    info = report.status(target)
    if json_output:
        print_json({"seconds": round(elapsed, 2), **info})
        return
    console.print(f"Cluster up in {elapsed:.1f}s.")
    console.print(f"  gateway:   {info['gateway_url']}  (TLS 1.2+, client certificate required)")
    if info["serve"]["url"]:
        console.print(f"  serve:     {info['serve']['url']}  (Ray Serve's applications, API keys accepted)")
    console.print(f"  Ray:       dashboard on {info['ray']['dashboard']} (loopback only, token auth, mutual TLS)")
    _os_user_line(run.ray_user, run.ray_uid)
    if run.node_ip:
        console.print(f"  nodes:     Ray on {run.node_ip}; `raywarden node token create` lets a worker join")
    _firewall_line(run.firewall)
    console.print(f"  metrics   {run.metrics or 'off'}")
    print_next(
        [
            "raywarden",
            "job",
            "submit",
            *_profile_args(target),
            "--",
            *FIRST_JOB,
        ]
    )


def down(
    state: StateDirOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Stop without asking, even while jobs run (they are killed); for scripts.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Stop the gateway and Ray started by `up`; on a worker, leave the cluster started by `join`.

    Jobs still running are named first, and `down` asks before killing them; without a terminal it refuses
    unless --force.
    """
    if NodeState(state_dir(state).root).exists():
        _leave(state_dir(state).root, json_output)
        return
    target = state_dir(state).require()
    killed = [] if force else _confirm_running_jobs(target)
    out = err_console if json_output else console
    with out.status("stopping") as spinner:
        result = lifecycle.down(target, progress=lambda msg: spinner.update(msg))
    if json_output:
        print_json({**result, "jobs_killed": killed})
    else:
        console.print("Cluster stopped." if result["stopped"] else "Cluster was not running; nothing left behind.")


def can_ask() -> bool:
    """A person can answer a question: stdin is a terminal."""
    return sys.stdin.isatty()


def _confirm_running_jobs(target: StateDir) -> list[str]:
    """Name the running jobs and ask; refuse without a terminal. Returns the ids the user agreed to kill."""
    from raywarden.cli.running_jobs import running_jobs

    try:
        jobs = running_jobs(target)
        problem = ""
    except RaywardenError as exc:
        jobs, problem = [], exc.message
    if not jobs and not problem:
        return []
    if problem:
        err_console.print(f"[yellow]{escape(problem)}[/]: jobs may still be running.")
    else:
        err_console.print(f"{len(jobs)} job(s) still running; stopping the cluster kills them:")
        for job in jobs:
            err_console.print(f"  {job.submission_id}  {job.status}  {job.owner}  {job.entrypoint[:60]}", markup=False)
    if not can_ask():
        first = jobs[0].submission_id if jobs else "ID"
        raise ClusterError(
            "not stopping the cluster: " + (problem if problem else f"{len(jobs)} job(s) are running"),
            hint=f"stop them first (`raywarden job stop {first}`), or pass --force to stop the cluster and kill them",
        )
    if not typer.confirm("Stop the cluster anyway?", default=False, err=True):
        err_console.print("Nothing stopped.")
        raise typer.Exit(1)
    return [job.submission_id for job in jobs]


def _leave(root: Path, json_output: bool) -> None:
    out = err_console if json_output else console
    with out.status("leaving the cluster"):
        result = worker.down(root)
    if json_output:
        print_json(result)
        return
    acknowledged = "the head recorded it" if result["head_acknowledged"] else "the head could not be told"
    console.print(f"Node {result['name']} left the cluster ({acknowledged}); Ray stopped, firewall rules removed.")


def status(state: StateDirOption = None, json_output: JsonOption = False) -> None:
    """Health of Ray and the gateway, the gateway URL, CA fingerprints, certificate expiry, audit public key."""
    info = report.status(state_dir(state).require())
    if json_output:
        print_json(info)
        return
    gw, ray = info["gateway"], info["ray"]
    console.print(f"cluster {info['trust_domain']}  ({info['state_dir']})")
    console.print(f"  gateway   {_health(gw['running'], gw['healthy'])}  {info['gateway_url']}")
    if gw["running"]:
        workers = ", ".join(str(p) for p in gw["workers"]) or "none answering"
        console.print(f"            supervisor {gw['pid']}, workers {workers}")
        if gw["metrics_url"]:
            console.print(f"            metrics {gw['metrics_url']} (loopback only)")
    console.print(f"  ray       {_health(ray['running'], ray['healthy'])}  {ray['dashboard'] or ''}")
    serve = info["serve"]
    if serve["enabled"]:
        where = f"{serve['url']}  (Serve's proxy {serve['proxy'] or 'not running'}, loopback only)"
        console.print(f"  serve     {'up' if serve['running'] else 'not answering'}  {where}", markup=False)
    console.print(
        f"  metrics   {_health(info['metrics']['running'], info['metrics']['healthy'])}  "
        f"{info['metrics']['status'] or ''}"
    )
    if ray["running"]:
        _os_user_line(ray["os_user"], ray["os_uid"])
        _firewall_line(ray["firewall"] or "")
        if ray["non_loopback_listeners"]:
            console.print(f"  [bold red]exposed[/]   {ray['non_loopback_listeners']}")
    console.print(f"  access CA SHA-256    {info['fingerprints']['access_ca']}")
    console.print(f"  internal CA SHA-256  {info['fingerprints']['internal_ca']}")
    for name, cert in info["certificates"].items():
        console.print(f"  {name:<12} expires {cert['not_after']} ({cert['days_left']} days)")
    console.print("  audit public key (keep a copy elsewhere to verify the log):")
    console.print(info["audit_public_key"].strip(), markup=False)


def _os_user_line(name: str | None, uid: int | None) -> None:
    if uid is not None and uid != os.geteuid():
        console.print(f"  OS user:   Ray and its jobs run as {name} (uid {uid}), apart from the control plane")
    else:
        console.print(
            "  OS user:   [yellow]Ray shares the control plane's OS user[/]: any job can read its keys "
            "(one principal only, unless started with --shared-os-user)"
        )


def _state_args(option: Path | None) -> list[str]:
    """``--state-dir DIR`` when the cluster is not where commands look by default."""
    chosen = state_dir(option).root
    return [] if chosen == state_dir(None).root else ["--state-dir", str(chosen)]


def _profile_args(target: StateDir) -> list[str]:
    """``--profile NAME`` when the current profile is not one of this cluster's local admin profiles."""
    from raywarden.client.profile import current_profile_name, list_profiles

    try:
        local = [p.name for p in list_profiles() if p.state_dir and Path(p.state_dir) == target.root]
    except RaywardenError:
        return []
    current = os.environ.get("RAYWARDEN_PROFILE") or current_profile_name()
    return [] if not local or current in local else ["--profile", local[0]]


def _health(running: bool, healthy: bool) -> str:
    if running and healthy:
        return "[green]up[/]      "
    if running:
        return "[yellow]degraded[/]"
    return "[red]down[/]    "


def _firewall_line(text: str) -> None:
    colour = "red" if text.startswith("NOT") else "green" if text == "installed" else "dim"
    console.print(f"  firewall  [{colour}]{text}[/]")

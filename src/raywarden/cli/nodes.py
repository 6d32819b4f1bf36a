"""`node token create | list | revoke | sync` and `join`: worker nodes of a multi-node cluster."""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
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
    shell_command,
    state_dir,
)
from raywarden.cluster import firewall, worker
from raywarden.cluster.runstate import RunState, read_run_state
from raywarden.config import ClusterConfig
from raywarden.errors import UsageError
from raywarden.identity.node_records import NodeRegistryError
from raywarden.identity.nodes import NodeRegistry
from raywarden.pki.certs import fingerprint, load_cert
from raywarden.secret import Secret

node_app = typer.Typer(help="Worker nodes: join tokens, the node list, revocation.", no_args_is_help=True)
token_app = typer.Typer(help="Single-use join tokens for worker nodes.", no_args_is_help=True)
node_app.add_typer(token_app, name="token")

MAX_TTL = dt.timedelta(hours=24)


def register(app: typer.Typer) -> None:
    app.add_typer(node_app, name="node")
    app.command("join")(join)


def parse_ttl(text: str) -> dt.timedelta:
    found = re.fullmatch(r"(\d+)([smh]?)", text.strip())
    if not found:
        raise UsageError(f"--ttl {text!r} is not a duration", hint="for example 90s, 10m or 2h")
    seconds = int(found[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[found[2]]
    ttl = dt.timedelta(seconds=seconds)
    if not dt.timedelta(seconds=10) <= ttl <= MAX_TTL:
        raise UsageError("--ttl must be between 10s and 24h", hint="a join token is meant to be used right away")
    return ttl


def _actor() -> str:
    return f"local:{os.getuid()}"


def join_url(config: ClusterConfig, run: RunState | None) -> tuple[str | None, str]:
    """The head URL a worker can dial, or None and why there is none."""
    port = config.listen.port
    if run is None:
        return None, (
            "the cluster is not running, so no address workers can reach is known; start it in multi-node mode: "
            f"`raywarden up --listen 0.0.0.0:{port} --node-ip ADDR`, then create a token"
        )
    if run.node_ip is None:
        return None, (
            "this head runs single-node (Ray and the gateway on loopback only), so no other host can join it; "
            f"restart it in multi-node mode: `raywarden down && raywarden up --listen 0.0.0.0:{port} --node-ip ADDR`"
        )
    if run.listen.is_loopback:
        return None, (
            f"the gateway listens on {run.listen}, which other hosts cannot reach; restart with "
            f"`--listen 0.0.0.0:{port}` or `--listen {run.node_ip}:{port}`"
        )
    host = run.node_ip if run.listen.host in ("0.0.0.0", "::") else run.listen.url_host()  # noqa: S104
    return f"https://{host}:{run.listen.port}", ""


@token_app.command("create")
def token_create(
    state: StateDirOption = None,
    ttl: Annotated[str, typer.Option(help="How long the token stays valid (e.g. 90s, 10m, 2h; at most 24h).")] = "10m",
    json_output: JsonOption = False,
) -> None:
    """Create a single-use join token (stored hashed) and print it with the command a worker runs.

    The join command is printed only when the head runs in multi-node mode (`up --node-ip`) with a gateway
    other hosts can reach; otherwise the output says why and what to change.
    """
    target = state_dir(state).require()
    lifetime = parse_ttl(ttl)
    config = target.load_config()
    token = NodeRegistry.open(target.identity_db).create_token(lifetime, created_by=_actor())
    ca_sha = fingerprint(load_cert(target.access_ca_cert))
    url, problem = join_url(config, read_run_state(target))
    audit = open_cluster_audit(target, config)
    try:
        audit.append(
            {
                "kind": "node",
                "event": "token.create",
                "jti": token.token_id,
                "actor": _actor(),
                "expires_at": token.expires_at.isoformat(),
            }
        )
    finally:
        audit.close()
    secret = token.token.reveal()
    command = shell_command("raywarden", "join", url, "--token", secret, "--ca-fingerprint", ca_sha) if url else None
    if json_output:
        print_json(
            {
                "token": secret,
                "token_id": token.token_id,
                "expires_at": token.expires_at.isoformat(),
                "head_url": url,
                "ca_fingerprint": ca_sha,
                "join_command": command,
                "no_join_command_because": problem or None,
            }
        )
        return
    console.print(f"Join token {token.token_id}, single use, valid until {token.expires_at:%Y-%m-%d %H:%M:%S} UTC.")
    if command is None:
        console.print(f"  token: {secret}", markup=False, soft_wrap=True)
        console.print(f"  access CA SHA-256: {ca_sha}", markup=False, soft_wrap=True)
        err_console.print(f"[yellow]No join command:[/] {escape(problem)}")
        return
    console.print("On the worker, run (as root):")
    console.print(f"  {command}", markup=False, soft_wrap=True)


@node_app.command("list")
def node_list(state: StateDirOption = None, wide: WideOption = False, json_output: JsonOption = False) -> None:
    """Nodes that joined this cluster: name, address, status, certificate serial and expiry (in full)."""
    target = state_dir(state).require()
    nodes = [n.public() for n in NodeRegistry.open(target.identity_db).all()]
    if json_output:
        print_json(nodes)
        return
    if not nodes:
        console.print("No worker nodes have joined. `raywarden node token create` makes a join token.")
        return
    lines = [
        [
            escape(str(n["name"])),
            escape(str(n["address"])),
            escape(str(n["status"])),
            escape(str(n["serial"])),
            escape(str(n["not_after"])[:16].replace("T", " ")),
        ]
        for n in nodes
    ]
    print_rows(("name", "address", "status", "serial", "certificate until"), lines, wide=wide)


@node_app.command("revoke")
def node_revoke(
    name: Annotated[str, typer.Argument(help="Name of the node, as `node list` shows it.")],
    state: StateDirOption = None,
    reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "revoked by operator",
    json_output: JsonOption = False,
) -> None:
    """Revoke a node: drop every packet from its address to this head, and refuse it from then on."""
    target = state_dir(state).require()
    config = target.load_config()
    audit = open_cluster_audit(target, config)
    try:
        try:
            node = NodeRegistry.open(target.identity_db).revoke(name, revoked_by=_actor(), reason=reason)
        except NodeRegistryError as exc:
            audit.append(
                {
                    "kind": "node",
                    "event": "node.revoke",
                    "decision": "deny",
                    "node": name,
                    "actor": _actor(),
                    "reason": exc.reason,
                }
            )
            raise
        # Ray cannot revoke a certificate; cutting the address off at the firewall is what refuses it.
        cut = firewall.ban(firewall.table_name(target), node.address)
        audit.append(
            {
                "kind": "node",
                "event": "node.revoke",
                "decision": "allow",
                "node": name,
                "node_address": node.address,
                "serial": node.serial,
                "actor": _actor(),
                "reason": reason,
                "firewall_updated": cut,
            }
        )
    finally:
        audit.close()
    result: dict[str, Any] = {
        "name": name,
        "address": node.address,
        "serial": node.serial,
        "revoked": True,
        "firewall_updated": cut,
    }
    if json_output:
        print_json(result)
        return
    console.print(f"Node {name} ({node.address}) revoked; it can never rejoin under this name or address.")
    if not cut:
        console.print("The head is not running: its firewall will refuse the address when it starts.")


@node_app.command("sync")
def node_sync(
    state: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """On a worker: fetch the cluster's current nodes from the head and update this node's allow list now (the
    node agent does it every minute)."""
    result = worker.sync(state_dir(state).root)
    if json_output:
        print_json(result)
    else:
        console.print(f"Node {result['name']}: peers {', '.join(result['peers'])}")


def join(
    head_url: Annotated[str, typer.Argument(help="The head's gateway, https://HEAD:PORT.")],
    token: Annotated[
        str,
        typer.Option(
            help="Join token from `raywarden node token create` (or set RAYWARDEN_JOIN_TOKEN).",
            envvar="RAYWARDEN_JOIN_TOKEN",
            show_envvar=True,
        ),
    ],
    ca_fingerprint: Annotated[
        str, typer.Option(help="SHA-256 fingerprint of the head's access CA (`raywarden status` on the head).")
    ],
    name: Annotated[str | None, typer.Option(help="This node's name (default: the host name).")] = None,
    address: Annotated[
        str | None, typer.Option(help="This node's IPv4 address (default: the one used to reach the head).")
    ] = None,
    num_cpus: Annotated[int | None, typer.Option(min=0, help="CPUs Ray may use on this node.")] = None,
    ray_user: Annotated[
        str | None,
        typer.Option(
            "--ray-user",
            metavar="USER",
            help="The unprivileged OS user this node's Ray, and so every job on it, runs as; it must exist. "
            "Default: raywarden-ray, a system user without login, created when missing.",
        ),
    ] = None,
    state: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Join this host to a cluster as a Ray worker: pinned TLS, node certificate, firewall, Ray with mTLS.

    Needs root. Ray runs as an OS user of its own (--ray-user), which cannot read this node's enrollment material."""
    root: Path = state_dir(state).root
    result = worker.join(
        head_url,
        Secret(token),
        ca_fingerprint,
        root=root,
        name=name,
        address=address,
        num_cpus=num_cpus,
        ray_user=ray_user,
    )
    if json_output:
        print_json(result)
        return
    console.print(f"Joined as {result['spiffe_id']} in {result['seconds']:.1f}s; Ray worker up on {result['address']}.")
    console.print(f"  head GCS   {result['gcs_address']}")
    console.print(f"  OS user    Ray runs as {result['ray_user']} (uid {result['ray_uid']})")
    console.print(f"  firewall   {result['firewall']}; peers {', '.join(result['peers'])}")
    console.print(f"  agent      pid {result['agent_pid']}: renews the node certificate, keeps peers in step")
    console.print(f"  state dir  {result['state_dir']}", markup=False)
    console.print("To leave the cluster:")
    console.print(f"  {shell_command('raywarden', 'down', '--state-dir', root)}", markup=False)

"""Listeners on non-loopback addresses: each must be the gateway (TLS, refusing anonymous requests) or a Ray
port covered by this cluster's nftables table."""

from __future__ import annotations

import os
import re
import subprocess

from raywarden.cluster import firewall
from raywarden.cluster.procs import is_loopback, listening_ports
from raywarden.cluster.runstate import ray_listeners
from raywarden.doctor.context import DoctorContext
from raywarden.doctor.probe import gateway_refuses_anonymous
from raywarden.doctor.report import Check, command, failed, passed, skipped


def checks(ctx: DoctorContext) -> list[Check]:
    if not ctx.running or ctx.run is None:
        return [skipped("listeners.ray"), skipped("listeners.gateway")]
    return [_ray(ctx), _gateway(ctx)]


def _restart_fix(ctx: DoctorContext) -> str:
    root = ctx.state.root
    return (
        f"{command('raywarden', 'down', '--state-dir', root)} && as root, with nftables installed: "
        f"{command('raywarden', 'up', '--state-dir', root)}"
    )


def _ray(ctx: DoctorContext) -> Check:
    run = ctx.run
    if not ctx.ray_up or run is None:
        return skipped("listeners.ray", "skipped: Ray is not running")
    found = ray_listeners(ctx.state, run.ray_pid)
    exposed = {port: addr for port, addr in found.items() if not is_loopback(addr)}
    if not exposed:
        return passed("listeners.ray", f"all {len(found)} Ray listeners are on loopback", ports=sorted(found))
    listing = ", ".join(f"{addr}:{port}" for port, addr in sorted(exposed.items()))
    shown = {str(p): a for p, a in exposed.items()}
    table = firewall.table_name(ctx.state)
    rules, why = _firewall_table(table)
    if not run.firewall.startswith("installed") or rules is None:
        return failed(
            "listeners.ray",
            f"Ray listens on {listing} with no firewall in front ({why or run.firewall})",
            _restart_fix(ctx),
            exposed=shown,
        )
    _, peers = _covered_ports(rules)
    uncovered = _uncovered(rules, exposed)
    if uncovered:
        return failed(
            "listeners.ray",
            f"Ray listens on ports this cluster's firewall table does not cover: {', '.join(map(str, uncovered))}",
            _restart_fix(ctx),
            exposed=shown,
        )
    who = f"only {peers} enrolled node address(es) may connect" if peers else "other hosts are dropped"
    return passed(
        "listeners.ray", f"Ray listens on {listing}; nftables table {table} covers every one ({who})", exposed=shown
    )


def _firewall_table(table: str) -> tuple[str | None, str | None]:
    """Trust the kernel, not the run file: the table must still be loaded. Returns (its rules, or why not)."""
    nft = firewall.nft_path()
    if nft is None or os.geteuid() != 0:
        return None, "cannot list nftables rules (needs root and nft)"
    result = subprocess.run(
        [nft, "list", "table", "inet", table], capture_output=True, text=True, check=False, timeout=10
    )
    if result.returncode != 0:
        return None, f"nftables table {table} is not loaded"
    return result.stdout, None


_SET = re.compile(r"set (\w+) \{[^}]*?elements = \{([^}]*)\}", re.DOTALL)
_WILDCARD = ("0.0.0.0", "::")  # noqa: S104 - addresses read back from /proc, not bound


def _covered_ports(rules: str) -> tuple[set[int], int]:
    """Ports in the table's protected sets (cluster/firewall.py: ray_ports, metrics_ports), and how many
    peer addresses are let through."""
    sets = _sets(rules)
    return sets.get("ray_ports", set()) | sets.get("metrics_ports", set()), len(sets.get("peers", ()))


def _uncovered(rules: str, exposed: dict[int, str]) -> list[int]:
    """Exposed ports no rule of the table covers. A listener on every address in the ephemeral range (a Serve
    replica's gRPC server) is covered by the ``socket wildcard`` rule unless it is one of the gateway's."""
    sets = _sets(rules)
    covered = sets.get("ray_ports", set()) | sets.get("metrics_ports", set())
    wildcard = sets.get("ephemeral_ports", set()) - sets.get("public_ports", set())
    return sorted(
        port for port, addr in exposed.items() if port not in covered and not (port in wildcard and addr in _WILDCARD)
    )


def _sets(rules: str) -> dict[str, set[int]]:
    """Each named set's elements: ports (ranges expanded), or, for address sets, one entry per address."""
    found: dict[str, set[int]] = {}
    for name, body in _SET.findall(rules):
        items = [item.strip() for item in body.replace("\n", " ").split(",") if item.strip()]
        values = found.setdefault(name, set())
        for index, item in enumerate(items):
            low, _, high = item.partition("-")
            if low.isdigit() and (not high or high.isdigit()):
                values.update(range(int(low), int(high or low) + 1))
            else:
                values.add(index)
    return found


def _gateway(ctx: DoctorContext) -> Check:
    run = ctx.run
    if not ctx.gateway_up or run is None:
        return skipped("listeners.gateway", "skipped: the gateway is not running")
    found = listening_ports({run.gateway_pid})
    if not found:
        return failed(
            "listeners.gateway",
            "the gateway process listens on no TCP port",
            f"see {ctx.state.logs_dir / 'gateway.log'}; then "
            + command("raywarden", "down", "--state-dir", ctx.state.root)
            + " && "
            + command("raywarden", "up", "--state-dir", ctx.state.root),
        )
    problems, seen = [], []
    for port, addr in sorted(found.items()):
        if port == run.gateway_metrics_port:  # plain HTTP by design: loopback, and the control plane's user only
            seen.append(f"{addr}:{port} (metrics)")
            if not is_loopback(addr):
                problems.append(f"{addr}:{port}: the gateway's metrics port is not on loopback")
            continue
        protected, evidence = gateway_refuses_anonymous(ctx, addr, port)
        seen.append(f"{addr}:{port} ({evidence})")
        if not protected:
            problems.append(f"{addr}:{port}: {evidence}")
    if problems:
        return failed(
            "listeners.gateway",
            "gateway listener not protected: " + "; ".join(problems),
            f"see {ctx.state.logs_dir / 'gateway.log'}; restart: "
            + command("raywarden", "down", "--state-dir", ctx.state.root)
            + " && "
            + command("raywarden", "up", "--state-dir", ctx.state.root),
        )
    where = "loopback only" if all(is_loopback(a) for a in found.values()) else "reachable from the network"
    return passed("listeners.gateway", f"gateway on {', '.join(seen)}; {where}")

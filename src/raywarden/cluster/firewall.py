"""nftables rules that keep Ray's ports unreachable from other hosts, for listeners Ray cannot bind to loopback.

Each node gets its own table (``inet raywarden_<id>``), so rules of two clusters never touch each other and
`down` removes exactly what `up` or `join` installed. The table holds named sets, so that `join`, `leave`
and `node revoke` change who may connect without reloading any rule:

- ``ray_ports``: Ray's gRPC and agent ports and the worker port range. Loopback and ``@peers`` only.
- ``metrics_ports``: Ray's Prometheus ports, plaintext without authentication: loopback only, for everyone.
- ``control_ports``: the gateway's own metrics port: loopback only, and on this host only the control plane's
  user may connect (not Ray's user, so no job reads the gateway's request counts).
- ``peers``: IPv4 addresses of the cluster's other nodes.
- ``banned``: revoked nodes. Every TCP packet from them is dropped (except to the gateway, so that a rejoin
  attempt gets a clear, audited refusal), which also cuts connections this node opened towards them.
- ``ephemeral_ports``: this host's ephemeral range (``ip_local_port_range``). Ray opens listeners there that
  no port option moves: each Serve replica's inter-deployment gRPC server binds ``[::]:0``. A new connection
  to a wildcard-bound listener in that range is let in from loopback and ``@peers`` only (``socket wildcard``).
- ``public_ports``: the gateway's API and Serve listeners, exempt from the rule above when the operator picks
  a port in the ephemeral range.

On this host, only processes of Ray's user (Ray, its workers, jobs) and of the control plane's user (the
gateway, Prometheus, the CLI) may connect to those ports (``meta skuid``): other local users are refused, so
the unauthenticated metrics and Ray's token-protected listeners are out of their reach too.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from raywarden.cluster.ports import RayPorts, WorkerPorts
from raywarden.errors import ClusterError
from raywarden.state import StateDir

log = logging.getLogger("raywarden.cluster")


def table_name(state: StateDir | Path) -> str:
    root = state.root if isinstance(state, StateDir) else state
    return "raywarden_" + hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class FirewallPlan:
    """Everything one node's table needs; rendered by ``ruleset``."""

    table: str
    ray_ports: tuple[int, ...]
    metrics_ports: tuple[int, ...]
    worker_range: tuple[int, int]
    peers: tuple[str, ...] = ()
    banned: tuple[str, ...] = ()
    # The gateway's port on a head: banned addresses may still reach it and be refused there, audited.
    gateway_port: int | None = None
    extra: tuple[int, ...] = field(default=())
    # The users whose processes may connect to Ray's ports on this host (Ray's, the control plane's);
    # empty: any local user.
    owner_uids: tuple[int, ...] = ()
    control_ports: tuple[int, ...] = ()
    ephemeral_range: tuple[int, int] | None = None
    public_ports: tuple[int, ...] = ()

    @classmethod
    def for_ports(
        cls,
        table: str,
        ports: RayPorts | WorkerPorts,
        *,
        peers: Iterable[str] = (),
        banned: Iterable[str] = (),
        gateway_port: int | None = None,
        extra: Iterable[int] = (),
        owners: Iterable[int] = (),
        control: Iterable[int] = (),
        public: Iterable[int] = (),
    ) -> FirewallPlan:
        metrics = tuple(ports.metrics())
        others = tuple(p for p in ports.all_fixed() if p not in metrics)
        return cls(
            table,
            others,
            metrics,
            (ports.min_worker, ports.max_worker),
            tuple(sorted(set(peers))),
            tuple(sorted(set(banned))),
            gateway_port,
            extra=tuple(sorted(set(extra))),
            owner_uids=tuple(sorted(set(owners) | {os.geteuid()})),
            control_ports=tuple(sorted(set(control))),
            ephemeral_range=ephemeral_range(),
            public_ports=tuple(sorted({*public, *((gateway_port,) if gateway_port else ())})),
        )


def ephemeral_range() -> tuple[int, int] | None:
    """The ports the kernel picks for a bind to port 0 in this network namespace."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return None


def owner_uids(ray_uid: int) -> tuple[int, ...]:
    """Who may connect to Ray's ports on this host: Ray's user and the control plane's (this process's)."""
    return tuple(sorted({os.geteuid(), ray_uid}))


def ruleset(plan: FirewallPlan) -> str:
    def elements(values: Iterable[str]) -> str:
        items = ", ".join(values)
        return f" elements = {{ {items} }};" if items else ""

    lo, hi = plan.worker_range
    ports = [str(p) for p in sorted(set(plan.ray_ports) | set(plan.extra))] + [f"{lo}-{hi}"]
    banned_rule = (
        f"    ip saddr @banned tcp dport != {plan.gateway_port} drop\n"
        if plan.gateway_port
        else "    ip saddr @banned drop\n"
    )
    ephemeral = f"{plan.ephemeral_range[0]}-{plan.ephemeral_range[1]}" if plan.ephemeral_range else ""
    # Drop, not reject: an attacker's probe learns nothing, not even that a port is filtered.
    return (
        f"table inet {plan.table} {{\n"
        f"  set peers {{ type ipv4_addr;{elements(plan.peers)} }}\n"
        f"  set banned {{ type ipv4_addr;{elements(plan.banned)} }}\n"
        f"  set ray_ports {{ type inet_service; flags interval;{elements(ports)} }}\n"
        f"  set metrics_ports {{ type inet_service;{elements(str(p) for p in plan.metrics_ports)} }}\n"
        f"  set control_ports {{ type inet_service;{elements(str(p) for p in plan.control_ports)} }}\n"
        f"  set ephemeral_ports {{ type inet_service; flags interval;{elements([ephemeral] if ephemeral else [])} }}\n"
        f"  set public_ports {{ type inet_service;{elements(str(p) for p in plan.public_ports)} }}\n"
        f"  chain input {{\n"
        f"    type filter hook input priority -10; policy accept;\n"
        f"    iif lo accept\n"
        f"{banned_rule}"
        f"    tcp dport @metrics_ports drop\n"
        f"    tcp dport @control_ports drop\n"
        f"    ip saddr @peers tcp dport @ray_ports accept\n"
        f"    tcp dport @ray_ports drop\n"
        f"    ip saddr @peers tcp dport @ephemeral_ports accept\n"
        # A SYN to a listener bound to every address: the connections this host opened itself, and its
        # listeners on one address, are untouched.
        f"    tcp dport @ephemeral_ports tcp dport != @public_ports tcp flags & (syn | ack) == syn "
        f"socket wildcard 1 drop\n"
        f"  }}\n"
        f"{_local_users_chain(plan.owner_uids, os.geteuid())}"
        f"}}\n"
    )


def _local_users_chain(owner_uids: tuple[int, ...], control_uid: int) -> str:
    """Connections from this host (all leave through lo) by anyone but Ray's and the control plane's users:
    refused at once; to the control plane's own ports, by anyone but its user."""
    if not owner_uids:
        return ""
    owners = "{ " + ", ".join(str(uid) for uid in owner_uids) + " }"
    return (
        f"  chain output {{\n"
        f"    type filter hook output priority -10; policy accept;\n"
        f"    oif lo meta skuid != {owners} tcp dport @ray_ports reject with tcp reset\n"
        f"    oif lo meta skuid != {owners} tcp dport @metrics_ports reject with tcp reset\n"
        f"    oif lo meta skuid != {control_uid} tcp dport @control_ports reject with tcp reset\n"
        f"  }}\n"
    )


def available() -> str | None:
    """None when rules can be installed here, else why not."""
    if os.geteuid() != 0:
        return "not root"
    if nft_path() is None:
        return "nft (nftables) is not installed"
    return None


def require_available(what: str) -> None:
    why = available()
    if why is not None:
        raise ClusterError(
            f"{what} needs nftables rules to keep Ray's ports away from other hosts, and they cannot be "
            f"installed here ({why})",
            hint="run as root with nftables installed (apt-get install nftables); Ray's listeners are never "
            "exposed without them",
        )


def install(plan: FirewallPlan) -> None:
    """Replace this node's table with ``plan``, atomically (one nft transaction). Raises on failure."""
    require_available("a multi-node cluster")
    remove_table(plan.table)
    _nft(["-f", "-"], stdin=ruleset(plan))


def protect(
    state: StateDir,
    ports: RayPorts,
    exposed: dict[int, str],
    extra: Iterable[int] = (),
    owners: Iterable[int] = (),
    control: Iterable[int] = (),
    public: Iterable[int] = (),
) -> str:
    """Single-node mode: install the rules when we can. Returns a one-line status for `status` and the audit.

    ``extra``: more loopback ports of this cluster (its Prometheus) kept from other local users; ``control``:
    ports only the control plane's user may reach (the gateway's metrics); ``public``: the gateway's listeners,
    which other hosts must reach whatever port they are on."""
    why = available()
    if why is not None:
        return _unprotected(exposed, why)
    try:
        plan = FirewallPlan.for_ports(
            table_name(state), ports, extra=extra, owners=owners, control=control, public=public
        )
        install(plan)
    except ClusterError as exc:
        return _unprotected(exposed, exc.message[:200])
    return "installed"


def add_peer(table: str, address: str) -> bool:
    return _element("add", table, "peers", _ipv4(address))


def remove_peer(table: str, address: str) -> bool:
    return _element("delete", table, "peers", _ipv4(address))


def ban(table: str, address: str) -> bool:
    remove_peer(table, address)
    return _element("add", table, "banned", _ipv4(address))


def add_ports(table: str, ports: Iterable[int], *, control: bool = False) -> bool:
    values = [str(int(p)) for p in ports]
    return bool(values) and _element("add", table, "control_ports" if control else "ray_ports", ", ".join(values))


_TABLE = re.compile(r"^table inet (raywarden_\w+) \{\n(.*?)^\}", re.DOTALL | re.MULTILINE)
_PORT_SET = re.compile(r"set (ray_ports|metrics_ports|control_ports) \{[^}]*?elements = \{([^}]*)\}", re.DOTALL)


def claimed_ports(except_table: str | None = None) -> frozenset[int]:
    """Ports in the sets of every other raywarden table on this host. Another cluster's owner rules refuse
    every user but its own there, so a port of ours among them would refuse our Ray's user."""
    if available() is not None:
        return frozenset()
    listed = subprocess.run([_nft_path(), "list", "ruleset"], capture_output=True, text=True, check=False)
    claimed: set[int] = set()
    for table, body in _TABLE.findall(listed.stdout):
        if table == except_table:
            continue
        for _, elements in _PORT_SET.findall(body):
            for item in elements.replace("\n", " ").split(","):
                low, _, high = item.strip().partition("-")
                if low.isdigit() and (not high or high.isdigit()):
                    claimed.update(range(int(low), int(high or low) + 1))
    return frozenset(claimed)


def table_exists(table: str) -> bool:
    if available() is not None:
        return False
    return (
        subprocess.run([_nft_path(), "list", "table", "inet", table], capture_output=True, check=False).returncode == 0
    )


def remove_table(table: str) -> None:
    if available() is None:
        subprocess.run([_nft_path(), "delete", "table", "inet", table], capture_output=True, check=False)


def remove(state: StateDir) -> None:
    remove_table(table_name(state))


def _element(verb: str, table: str, set_name: str, value: str) -> bool:
    """Change one set of a table that exists. False when the table is absent (the node is down)."""
    if not table_exists(table):
        return False
    _nft([verb, "element", "inet", table, set_name, f"{{ {value} }}"])
    return True


def _ipv4(address: str) -> str:
    try:
        return str(ipaddress.IPv4Address(address))
    except ValueError:
        raise ClusterError(
            f"{address!r} is not an IPv4 address", hint="multi-node clusters use IPv4 node addresses"
        ) from None


def nft_path() -> str | None:
    """`nft` on PATH, or in root's sbin folders (a minimal PATH often leaves them out)."""
    return shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")


def _nft_path() -> str:
    return nft_path() or "nft"


def _nft(args: list[str], *, stdin: str | None = None) -> None:
    result = subprocess.run([_nft_path(), *args], input=stdin, text=True, capture_output=True, check=False)
    if result.returncode != 0:
        # "element does not exist" on delete is not a failure: the end state is the one asked for.
        if args[0] == "delete" and "No such file" in result.stderr:
            return
        raise ClusterError(
            f"nft {' '.join(args[:2])} failed: {result.stderr.strip()[:300]}",
            hint="check that nftables works here: `nft list ruleset`",
        )


def _unprotected(exposed: dict[int, str], why: str) -> str:
    if exposed:
        listing = ", ".join(f"{addr}:{port}" for port, addr in sorted(exposed.items()))
        log.warning(
            "Ray listens on non-loopback addresses (%s) and no firewall rules were installed (%s)", listing, why
        )
        return f"NOT INSTALLED ({why}); exposed: {listing}"
    return f"not installed ({why}); every Ray listener is on loopback"

"""nftables rules that keep Ray's ports unreachable from other hosts, for listeners Ray cannot bind to loopback.

Each cluster gets its own table (``inet raywarden_<id>``), so rules of two clusters never touch each other
and `down` removes exactly what `up` installed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess

from raywarden.cluster.ports import RayPorts
from raywarden.state import StateDir

log = logging.getLogger("raywarden.cluster")


def table_name(state: StateDir) -> str:
    return "raywarden_" + hashlib.sha256(str(state.root.resolve()).encode()).hexdigest()[:12]


def ruleset(state: StateDir, ports: RayPorts) -> str:
    fixed = ", ".join(str(p) for p in sorted(ports.all_fixed()))
    table = table_name(state)
    # Drop, not reject: an attacker's probe learns nothing, not even that a port is filtered.
    return (
        f"table inet {table} {{\n"
        f"  chain input {{\n"
        f"    type filter hook input priority -10; policy accept;\n"
        f"    iif lo accept\n"
        f"    tcp dport {{ {fixed} }} drop\n"
        f"    tcp dport {ports.min_worker}-{ports.max_worker} drop\n"
        f"  }}\n"
        f"}}\n"
    )


def protect(state: StateDir, ports: RayPorts, exposed: dict[int, str]) -> str:
    """Install the rules when we can. Returns a one-line status that `status` and the audit log show."""
    if os.geteuid() != 0:
        return _unprotected(exposed, "not root")
    nft = shutil.which("nft")
    if nft is None:
        return _unprotected(exposed, "nft (nftables) is not installed")
    remove(state)
    result = subprocess.run([nft, "-f", "-"], input=ruleset(state, ports), text=True, capture_output=True,
                            check=False)
    if result.returncode != 0:
        return _unprotected(exposed, f"nft failed: {result.stderr.strip()[:200]}")
    return "installed"


def remove(state: StateDir) -> None:
    nft = shutil.which("nft")
    if nft is None or os.geteuid() != 0:
        return
    subprocess.run([nft, "delete", "table", "inet", table_name(state)], capture_output=True, check=False)


def _unprotected(exposed: dict[int, str], why: str) -> str:
    if exposed:
        listing = ", ".join(f"{addr}:{port}" for port, addr in sorted(exposed.items()))
        log.warning("Ray listens on non-loopback addresses (%s) and no firewall rules were installed (%s)",
                    listing, why)
        return f"NOT INSTALLED ({why}); exposed: {listing}"
    return f"not installed ({why}); every Ray listener is on loopback"

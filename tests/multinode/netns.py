"""A small real network on one machine: network namespaces joined by a bridge, for multi-node tests.

The bridge lives in a namespace of its own (the "switch"), so nothing is added to the host's own network.
Only the addresses of these namespaces are ever targeted.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.231.0"
ROLES = {"head": f"{SUBNET}.2", "worker": f"{SUBNET}.3", "attacker": f"{SUBNET}.4"}
REPO = Path(__file__).resolve().parents[2]


def unavailable() -> str | None:
    """Why these tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and nftables)"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip netns`)"
    if shutil.which("nft") is None:
        return "needs nftables (`nft`)"
    probe = f"rwprobe{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"`ip netns add` does not work here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Network:
    tag: str
    names: dict[str, str] = field(default_factory=dict)

    @property
    def switch(self) -> str:
        return f"rw{self.tag}-sw"

    def ns(self, role: str) -> str:
        return self.names[role]

    def address(self, role: str) -> str:
        return ROLES[role]

    def run(
        self,
        role: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        timeout: float = 300,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["ip", "netns", "exec", self.ns(role), *argv],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"[{role}] {' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def python(
        self,
        role: str,
        module: str,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = 300,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        return self.run(role, [sys.executable, "-m", module, *args], env=env, timeout=timeout, check=check)

    def popen(self, role: str, argv: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                ["ip", "netns", "exec", self.ns(role), *argv],
                env=env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def listening(self, role: str) -> dict[int, str]:
        """TCP port -> bound address, for every listener in that namespace."""
        out = self.run(role, ["ss", "-Htln"], check=True).stdout
        found: dict[int, str] = {}
        for line in out.splitlines():
            local = line.split()[3]
            addr, _, port = local.rpartition(":")
            found[int(port)] = addr.strip("[]")
        return found

    def pids(self, role: str) -> list[int]:
        """Processes running inside that namespace (all of them were started by this test)."""
        try:
            target = os.stat(f"/run/netns/{self.ns(role)}").st_ino
        except FileNotFoundError:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.stat(f"/proc/{entry.name}/ns/net").st_ino == target:
                        found.append(int(entry.name))
        return found

    def kill_all(self, role: str) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.pids(role):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while self.pids(role) and time.monotonic() < deadline:
                time.sleep(0.2)


def create() -> Network:
    net = Network(secrets.token_hex(2))
    _ip("netns", "add", net.switch)
    _ip("-n", net.switch, "link", "add", "br0", "type", "bridge")
    _ip("-n", net.switch, "addr", "add", f"{SUBNET}.1/24", "dev", "br0")
    _ip("-n", net.switch, "link", "set", "br0", "up")
    for role, address in ROLES.items():
        name = f"rw{net.tag}-{role}"
        _ip("netns", "add", name)
        net.names[role] = name
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("link", "add", "eth0", "netns", name, "type", "veth", "peer", "name", f"p-{role}", "netns", net.switch)
        _ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", name, "link", "set", "eth0", "up")
        # A default route, so that software that picks "the outward address" (stock Ray does) finds this one.
        _ip("-n", name, "route", "add", "default", "via", f"{SUBNET}.1")
        _ip("-n", net.switch, "link", "set", f"p-{role}", "master", "br0")
        _ip("-n", net.switch, "link", "set", f"p-{role}", "up")
    return net


def destroy(net: Network) -> None:
    """Stop every process in the namespaces, then delete them (their nftables tables go with them)."""
    for role in list(net.names):
        net.kill_all(role)
    for name in [*net.names.values(), net.switch]:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)

"""One raywarden cluster in network namespaces, driven through the CLI as its operator would: shared by the
multinode test modules."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raywarden.state import StateDir
from tests.multinode import netns

GATEWAY_PORT = 8443
# In the ephemeral range on purpose: the firewall's rule for wildcard listeners there must exempt it.
SERVE_PORT = 45443
CLI = "raywarden.cli.main"


@dataclass
class Setup:
    net: netns.Network
    root: Path
    head_state: StateDir
    fingerprint: str = ""
    first_token: str = ""
    join_seconds: list[float] = field(default_factory=list)

    def env(self, role: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYWARDEN_"))}
        env["RAYWARDEN_HOME"] = str(self.root / role / "home")
        env["HOME"] = str(self.root / role / "home")
        return env

    def cli(self, role: str, *args: str, check: bool = False, timeout: float = 300) -> Any:
        return self.net.python(role, CLI, *args, env=self.env(role), check=check, timeout=timeout)

    def head(self, *args: str, check: bool = True) -> Any:
        return self.cli("head", *args, "--state-dir", str(self.head_state.root), check=check)

    def token(self, ttl: str = "10m") -> str:
        out = json.loads(self.head("node", "token", "create", "--ttl", ttl, "--json").stdout)
        assert out["ca_fingerprint"] == self.fingerprint
        return str(out["token"])

    def join(self, role: str, token: str, *, state: str, name: str, fingerprint: str | None = None) -> Any:
        started = time.monotonic()
        result = self.cli(
            role,
            "join",
            f"https://{netns.ROLES['head']}:{GATEWAY_PORT}",
            "--token",
            token,
            "--ca-fingerprint",
            fingerprint or self.fingerprint,
            "--name",
            name,
            "--num-cpus",
            "1",
            "--state-dir",
            str(self.root / role / state),
            "--json",
        )
        if result.returncode == 0:
            self.join_seconds.append(round(time.monotonic() - started, 2))
        return result

    def audit(self) -> list[dict[str, Any]]:
        records = []
        for path in sorted(self.head_state.audit_dir.glob("audit-*.jsonl")):
            records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return records

    def scan(self, role: str) -> dict[str, Any]:
        ports = sorted(self.net.listening(role))
        out = self.net.python(
            "attacker",
            "tests.multinode.probe",
            "scan",
            netns.ROLES[role],
            *[str(p) for p in ports],
            check=True,
            timeout=120,
        ).stdout
        listening = self.net.listening(role)
        return {port: {"bound": listening.get(int(port), "?"), **result} for port, result in json.loads(out).items()}

    def grpc(self, role: str, target: str, ca: Path, cert: str | None = None, key: str | None = None) -> bool:
        args = [target, str(ca), *([cert, key] if cert and key else [])]
        out = self.net.python(role, "tests.multinode.probe", "grpc", *args, check=True, timeout=60).stdout
        return bool(json.loads(out)["ready"])

"""A worker node's state dir: what `join` learnt (node.json) and where its credentials are.

The state dir is root's (0700): the node secret, the access CA it pins and node.json stay there, out of reach
of Ray's user; Ray gets copies of what it needs in its own folder (raydir.py).
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from raywarden.cluster import firewall
from raywarden.cluster.ports import WorkerPorts
from raywarden.errors import ConfigError
from raywarden.files import write_private
from raywarden.state import runtime_dir_for


class NodeConfig(BaseModel):
    """What `join` learnt, kept in the worker's state dir for `down`, `node sync` and the node agent."""

    model_config = ConfigDict(extra="forbid")
    head_url: str
    name: str
    spiffe_id: str
    address: str
    trust_domain: str
    gcs_address: str
    head_ip: str
    peers: list[str]
    ports: WorkerPorts
    access_ca_fingerprint: str
    joined_at: str
    ray_pid: int | None = None
    firewall: str = ""
    # The OS user this node's Ray runs as (`join` runs as root, so always one of its own).
    ray_user: str | None = None
    # Fields below are absent from node.json files of earlier releases.
    num_cpus: int | None = None
    # The node agent (cluster/agent.py): renews the certificate, keeps peers in step, restarts Ray.
    agent_pid: int | None = None
    # The head's bound on a drain before a restart (its `node_drain_timeout`), and the drain deadline the
    # running Ray was started with (Ray fixes it at start: RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S).
    drain_timeout_s: float = 600.0
    ray_drain_s: float = 0.0


@dataclass(frozen=True)
class NodeState:
    """Paths inside a worker's state dir (the same default location as a head's: a host is one or the other)."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "node.json"

    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    @property
    def node_key(self) -> Path:
        return self.pki_dir / "node.key"

    @property
    def node_cert(self) -> Path:
        return self.pki_dir / "node.crt"

    @property
    def internal_ca_cert(self) -> Path:
        return self.pki_dir / "internal-ca.crt"

    @property
    def access_ca_cert(self) -> Path:
        return self.pki_dir / "access-ca.crt"

    @property
    def ray_token(self) -> Path:
        return self.root / "keys" / "ray-token"

    @property
    def node_secret(self) -> Path:
        return self.root / "keys" / "node-secret"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def agent_status(self) -> Path:
        """What the node agent is doing and how its last renewal went (read by `cert status`)."""
        return self.root / "agent.json"

    @property
    def ray_dir(self) -> Path:
        """Ray's own folder (raydir.py); `join` needs root, so a worker's Ray always has a user of its own."""
        return runtime_dir_for(self.root, separated=True) / "ray"

    @property
    def ray_temp_dir(self) -> Path:
        return self.ray_dir / "tmp"

    @property
    def table(self) -> str:
        return firewall.table_name(self.root)

    def exists(self) -> bool:
        return self.config_path.is_file()

    def load(self) -> NodeConfig:
        try:
            return NodeConfig.model_validate_json(self.config_path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{self.root} holds no joined worker node", hint="run `raywarden join` first") from None

    def save(self, config: NodeConfig) -> None:
        write_private(self.config_path, config.model_dump_json(indent=2).encode())

    def update(self, config: NodeConfig | None = None, **fields: Any) -> NodeConfig:
        """Change these fields of node.json and nothing else (and in ``config``, the caller's copy). `join`, the
        node agent and Ray's start each change their own fields from their own processes: saving a whole copy
        read earlier would undo what another wrote meanwhile (the agent's pid, lost that way once)."""
        fd = os.open(self.root / "node.json.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released with the descriptor
            updated = NodeConfig.model_validate({**self.load().model_dump(), **fields})
            self.save(updated)
        finally:
            os.close(fd)
        if config is not None:
            for name, value in fields.items():
                setattr(config, name, value)
        return updated

"""Free TCP ports for one cluster's Ray processes, so that two clusters on a host never collide."""

from __future__ import annotations

import secrets
import socket
from contextlib import ExitStack
from typing import ClassVar

from pydantic import BaseModel, ConfigDict
from typing_extensions import Self


class _PortPlan(BaseModel):
    """Ports for one node's Ray processes: named fixed ports plus a run of worker ports."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    WORKER_RUN: ClassVar[int] = 256
    min_worker: int
    max_worker: int

    @classmethod
    def allocate(
        cls, host: str = "127.0.0.1", worker_ports: int | None = None, avoid: frozenset[int] = frozenset()
    ) -> Self:
        """Ask the kernel for free ports, holding them all until every one is chosen.

        The worker range is a run of consecutive free ports found by probing upwards from a free one. ``avoid``:
        ports that are free but taken otherwise (another cluster's firewall admits only its own users there).
        """
        length = worker_ports or cls.WORKER_RUN
        with ExitStack() as stack:
            chosen: dict[str, int] = {}
            for name in cls.model_fields:
                if name in ("min_worker", "max_worker"):
                    continue
                for _ in range(1000):  # a refused port stays bound meanwhile, so the kernel offers another
                    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    sock.bind((host, 0))
                    chosen[name] = sock.getsockname()[1]
                    if chosen[name] not in avoid:
                        break
            start = _free_run(host, length, exclude=set(chosen.values()) | avoid)
            return cls(**chosen, min_worker=start, max_worker=start + length - 1)

    def all_fixed(self) -> list[int]:
        return [v for k, v in self.model_dump().items() if k not in ("min_worker", "max_worker")]


class RayPorts(_PortPlan):
    """The head's listeners."""

    gcs: int
    dashboard: int
    client_server: int
    node_manager: int
    object_manager: int
    dashboard_agent_http: int
    dashboard_agent_grpc: int
    metrics_export: int
    runtime_env_agent: int
    dashboard_metrics: int
    autoscaler_metrics: int

    def metrics(self) -> list[int]:
        """Prometheus ports: plaintext and unauthenticated in Ray, so loopback-only even for cluster nodes."""
        return [self.metrics_export, self.dashboard_metrics, self.autoscaler_metrics]


class WorkerPorts(_PortPlan):
    """The listeners of a worker node (no GCS, dashboard or Ray Client server: those live on the head)."""

    WORKER_RUN: ClassVar[int] = 128
    node_manager: int
    object_manager: int
    dashboard_agent_http: int
    dashboard_agent_grpc: int
    metrics_export: int
    runtime_env_agent: int

    def metrics(self) -> list[int]:
        return [self.metrics_export]


def _free_run(host: str, length: int, exclude: set[int]) -> int:
    # A random starting point keeps two clusters that start at once from probing the same run.
    offset = secrets.randbelow(300) * length
    bases = list(range(20000, 60000 - length, length))
    bases = bases[offset // length :] + bases[: offset // length]
    for base in bases:
        if exclude & set(range(base, base + length)):
            continue
        if all(_is_free(host, p) for p in range(base, base + length)):
            return base
    raise OSError("no run of free ports for Ray workers")


def _is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True

"""Free TCP ports for one cluster's Ray processes, so that two clusters on a host never collide."""

from __future__ import annotations

import secrets
import socket
from contextlib import ExitStack

from pydantic import BaseModel, ConfigDict


class RayPorts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
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
    min_worker: int
    max_worker: int

    @classmethod
    def allocate(cls, host: str = "127.0.0.1", worker_ports: int = 256) -> RayPorts:
        """Ask the kernel for free ports, holding them all until every one is chosen.

        The worker range is a run of consecutive free ports found by probing upwards from a free one.
        """
        with ExitStack() as stack:
            names = [n for n in cls.model_fields if n not in ("min_worker", "max_worker")]
            chosen: dict[str, int] = {}
            for name in names:
                sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                sock.bind((host, 0))
                chosen[name] = sock.getsockname()[1]
            start = _free_run(host, worker_ports, exclude=set(chosen.values()))
            return cls(**chosen, min_worker=start, max_worker=start + worker_ports - 1)

    def all_fixed(self) -> list[int]:
        return [v for k, v in self.model_dump().items() if k not in ("min_worker", "max_worker")]

    def metrics(self) -> list[int]:
        """Prometheus ports: plaintext and unauthenticated in Ray, so loopback-only even for cluster nodes."""
        return [self.metrics_export, self.dashboard_metrics, self.autoscaler_metrics]


class WorkerPorts(BaseModel):
    """The listeners of a worker node (no GCS, dashboard or Ray Client server: those live on the head)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    node_manager: int
    object_manager: int
    dashboard_agent_http: int
    dashboard_agent_grpc: int
    metrics_export: int
    runtime_env_agent: int
    min_worker: int
    max_worker: int

    @classmethod
    def allocate(cls, host: str, worker_ports: int = 128) -> WorkerPorts:
        """Free ports on this host: only the worker itself can know which ones are free here."""
        with ExitStack() as stack:
            chosen: dict[str, int] = {}
            for name in cls.model_fields:
                if name in ("min_worker", "max_worker"):
                    continue
                sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                sock.bind((host, 0))
                chosen[name] = sock.getsockname()[1]
            start = _free_run(host, worker_ports, exclude=set(chosen.values()))
            return cls(**chosen, min_worker=start, max_worker=start + worker_ports - 1)

    def all_fixed(self) -> list[int]:
        return [v for k, v in self.model_dump().items() if k not in ("min_worker", "max_worker")]

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

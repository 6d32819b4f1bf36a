"""The gateway's metrics endpoint: the workers' metrics summed (prometheus_client's multiprocess mode), plus
what only the supervisor knows (its workers, the days left on the gateway's certificate, the decision
cache's hit ratio), on a loopback-only port. docs/metrics.md, "The gateway's metrics"."""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from raywarden.gateway.runinfo import METRICS_HOST
from raywarden.pki.certs import load_cert
from raywarden.state import StateDir

log = logging.getLogger("raywarden.gateway")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def metrics_dir(state: StateDir) -> Path:
    """This run's per-process metric files (made empty by gateway/__main__.py when the supervisor starts)."""
    return state.run_dir / "gateway-metrics"


class SupervisorCollector:
    """Gauges computed when Prometheus scrapes."""

    def __init__(self, state: StateDir, workers: Callable[[], list[int]], merged: MultiProcessCollector) -> None:
        self._state = state
        self._workers = workers
        self._merged = merged

    def collect(self) -> Iterator[Metric]:
        workers = GaugeMetricFamily("raywarden_gateway_workers", "Gateway worker processes running.")
        workers.add_metric([], len(self._workers()))
        yield workers
        days = GaugeMetricFamily(
            "raywarden_gateway_certificate_days_left", "Days until the gateway's TLS certificate expires."
        )
        try:
            cert = load_cert(self._state.gateway_cert)  # read at each scrape: a renewal shows at once
            left = (cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)).total_seconds() / 86400
            days.add_metric([], round(left, 3))
        except (OSError, ValueError) as exc:
            log.warning("metrics: cannot read the gateway certificate: %s", exc)
        yield days
        totals = {"hits": 0.0, "misses": 0.0}
        for metric in self._merged.collect():  # type: ignore[no-untyped-call]
            for kind in totals:
                if metric.name == f"raywarden_gateway_decision_cache_{kind}":
                    totals[kind] = sum(s.value for s in metric.samples if s.name.endswith("_total"))
        ratio = GaugeMetricFamily(
            "raywarden_gateway_decision_cache_hit_ratio",
            "Share of decisions answered from the decision cache since the gateway started.",
        )
        asked = totals["hits"] + totals["misses"]
        ratio.add_metric([], totals["hits"] / asked if asked else 0.0)
        yield ratio


@dataclass
class MetricsServer:
    port: int
    _server: Any
    _thread: threading.Thread

    @classmethod
    def start(cls, state: StateDir, port: int | None, workers: Callable[[], list[int]]) -> MetricsServer | None:
        folder = os.environ.get(MULTIPROC_ENV)
        if port is None or not folder:
            return None
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]  # registers itself
        unregistered = MultiProcessCollector(None, path=folder)  # type: ignore[no-untyped-call]
        registry.register(SupervisorCollector(state, workers, unregistered))
        server, thread = start_http_server(port, addr=METRICS_HOST, registry=registry)
        return cls(port, server, thread)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

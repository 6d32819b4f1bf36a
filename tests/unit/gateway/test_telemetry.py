"""The request metrics a worker tallies and flushes: the same counts, sums and buckets as one ``observe`` per
request would give, read back through prometheus_client's registry."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY

from raywarden.gateway.telemetry import FLUSH_EVERY_S, RequestMetrics

pytestmark = pytest.mark.unit


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def exchange(action: str, status: int, stages: dict[str, float], cache: Any) -> Any:
    return SimpleNamespace(
        action=action,
        decision="allow",
        status=status,
        stages=stages,
        audit=SimpleNamespace(queued=3),
        engine=SimpleNamespace(cache=cache),
    )


def test_a_flush_writes_what_each_request_would_have() -> None:
    cache = SimpleNamespace(hits=0, misses=0)
    names = {
        "requests": ("raywarden_gateway_requests_total", {"action": "t.one", "decision": "allow", "status": "200"}),
        "refused": ("raywarden_gateway_requests_total", {"action": "t.one", "decision": "allow", "status": "503"}),
        "count": ("raywarden_gateway_request_seconds_count", {}),
        "sum": ("raywarden_gateway_request_seconds_sum", {}),
        "le_1ms": ("raywarden_gateway_request_seconds_bucket", {"le": "0.001"}),
        "le_inf": ("raywarden_gateway_request_seconds_bucket", {"le": "+Inf"}),
        "stage": ("raywarden_gateway_stage_seconds_count", {"stage": "decision"}),
        "stage_le_250us": ("raywarden_gateway_stage_seconds_bucket", {"stage": "decision", "le": "0.00025"}),
        "hits": ("raywarden_gateway_decision_cache_hits_total", {}),
        "jobs": ("raywarden_gateway_job_record_misses_total", {}),
    }
    before = {key: sample(name, **labels) for key, (name, labels) in names.items()}
    latencies = [0.0001, 0.001, 0.0011, 12.0, 100.0]  # on a bound, just over one, past the last

    async def requests() -> RequestMetrics:
        metrics = RequestMetrics()
        for i, seconds in enumerate(latencies):
            cache.hits += 2
            status = 503 if i == 0 else 200
            metrics.observe(exchange("t.one", status, {"decision": seconds / 10}, cache), seconds, (0, i))
        assert sample(names["count"][0]) == before["count"]  # tallied, not yet written
        await asyncio.sleep(FLUSH_EVERY_S * 3)
        return metrics

    asyncio.run(requests())
    after = {key: sample(name, **labels) for key, (name, labels) in names.items()}
    delta = {key: after[key] - before[key] for key in names}
    assert delta["requests"] == 4 and delta["refused"] == 1
    assert delta["count"] == 5 and delta["le_inf"] == 5
    assert delta["sum"] == pytest.approx(sum(latencies))
    assert delta["le_1ms"] == 2  # 0.0001 and 0.001 (a bucket's bound is inside it)
    assert delta["stage"] == 5 and delta["stage_le_250us"] == 3  # 0.00001, 0.0001 and 0.00011
    assert delta["hits"] == 10 and delta["jobs"] == 4


def test_flush_at_shutdown_writes_what_is_pending() -> None:
    cache = SimpleNamespace(hits=0, misses=0)
    name, labels = "raywarden_gateway_requests_total", {"action": "t.two", "decision": "allow", "status": "200"}
    before = sample(name, **labels)

    async def one() -> None:
        metrics = RequestMetrics()
        metrics.observe(exchange("t.two", 200, {}, cache), 0.01, (0, 0))
        metrics.flush()  # what the app's lifespan shutdown calls

    asyncio.run(one())
    assert sample(name, **labels) - before == 1

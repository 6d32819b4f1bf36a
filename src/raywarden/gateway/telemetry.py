"""The gateway's own Prometheus metrics (docs/metrics.md, "The gateway's metrics").

Every worker process updates them; with several workers, prometheus_client's multiprocess mode keeps each
process's values in files under ``PROMETHEUS_MULTIPROC_DIR`` and the supervisor (gateway/supervisor.py)
serves their sum on a loopback-only port. Labels stay few and bounded: an action of the route table, a
decision word, a status code, a stage name.
"""

from __future__ import annotations

import asyncio
import bisect
import collections

from prometheus_client import Counter, Gauge, Histogram

from raywarden.gateway.exchange import Exchange
from raywarden.policy.cache import DecisionCache

# From a fraction of a millisecond (a cached decision) to the upstream timeout's neighbourhood.
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# How often a worker writes the requests it tallied into the metrics (RequestMetrics).
FLUSH_EVERY_S = 0.1
STAGES = ("authentication", "job_lookup", "decision", "audit", "upstream")

REQUESTS = Counter(
    "raywarden_gateway_requests",
    "Requests answered, by the route's action, the decision recorded and the status sent.",
    ["action", "decision", "status"],
)
LATENCY = Histogram(
    "raywarden_gateway_request_seconds",
    "Time from the request's arrival to its answer (to the end of the answer when it is streamed).",
    buckets=LATENCY_BUCKETS,
)
STAGE_LATENCY = Histogram(
    "raywarden_gateway_stage_seconds",
    "Time per stage of a request: authentication, the job's record, the decision, the durable decision "
    "record, and Ray until its status and headers arrived.",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
CACHE_HITS = Counter("raywarden_gateway_decision_cache_hits", "Decisions answered from the decision cache.")
CACHE_MISSES = Counter("raywarden_gateway_decision_cache_misses", "Decisions the cache did not hold (asked of Cedar).")
JOB_RECORD_HITS = Counter("raywarden_gateway_job_record_hits", "Job records answered from a worker's cache.")
JOB_RECORD_MISSES = Counter("raywarden_gateway_job_record_misses", "Job records asked of Ray.")
UPSTREAM_ERRORS = Counter(
    "raywarden_gateway_upstream_errors", "Failures talking to Ray's dashboard, by where they happened.", ["kind"]
)
AUDIT_FSYNC = Histogram(
    "raywarden_gateway_audit_fsync_seconds",
    "Time of each write and fsync of a batch of audit records.",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0),
)
AUDIT_BATCH = Histogram(
    "raywarden_gateway_audit_batch_records",
    "Records per group commit of the audit log.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024),
)
AUDIT_QUEUE = Gauge(
    "raywarden_gateway_audit_queue_depth",
    "Audit records submitted and not yet durable.",
    multiprocess_mode="livesum",
)
AUDIT_PENDING_OUTCOMES = Gauge(
    "raywarden_gateway_audit_pending_outcomes",
    "Outcome records a worker submitted that are not yet durable.",
    multiprocess_mode="livesum",
)


UPSTREAM_ERROR_KINDS = ("connect", "request", "status", "body", "websocket")
for _kind in UPSTREAM_ERROR_KINDS:  # present at 0 from the start, so that a rate can be taken at once
    UPSTREAM_ERRORS.labels(_kind)


def upstream_error(kind: str) -> None:
    UPSTREAM_ERRORS.labels(kind).inc()


class _Tally:
    """One histogram child's observations since the last flush: the sum and a count per bucket."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.sum = 0.0
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf

    def add(self, value: float) -> None:
        self.sum += value
        self.counts[bisect.bisect_left(self.bounds, value)] += 1

    def flush_into(self, child: Histogram) -> None:
        # What ``Histogram.observe`` does per value, once per bucket: prometheus_client has no bulk observe.
        # tests/unit/gateway/test_telemetry.py checks the result through the registry's exposition.
        child._sum.inc(self.sum)
        for bucket, count in zip(child._buckets, self.counts, strict=True):
            if count:
                bucket.inc(count)


class RequestMetrics:
    """Counts finished exchanges; also carries the decision cache's and the job records' counters.

    Each update of a multiprocess metric takes a process-wide lock and writes a memory-mapped file; a request
    made a dozen of them, about 5% of a worker's CPU under load. Requests are tallied here in plain Python
    and written to the metrics every ``FLUSH_EVERY_S`` (and at shutdown): a scrape sees them that much later.
    """

    def __init__(self) -> None:
        self._cache: DecisionCache | None = None
        self._hits = self._misses = 0
        self._jobs = (0, 0)
        # What the unlabelled counters (decision cache, job records) gained since the last flush.
        self._gained: collections.Counter[Counter] = collections.Counter()
        self._requests: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._latency = _Tally(LATENCY_BUCKETS)
        self._stages: dict[str, _Tally] = {}
        self._pending_outcomes: int | None = None
        self._flush_due: asyncio.TimerHandle | None = None

    def observe(self, ex: Exchange, elapsed_s: float, job_records: tuple[int, int]) -> None:
        self._requests[(ex.action or "none", ex.decision or "none", str(ex.status or 0))] += 1
        self._latency.add(elapsed_s)
        for stage, seconds in ex.stages.items():
            tally = self._stages.get(stage)
            if tally is None:
                tally = self._stages[stage] = _Tally(LATENCY_BUCKETS)
            tally.add(seconds)
        self._pending_outcomes = ex.audit.queued
        self._cache_counts(ex.engine.cache)
        self._jobs_counts(*job_records)
        if self._flush_due is None:
            self._flush_due = asyncio.get_running_loop().call_later(FLUSH_EVERY_S, self.flush)

    def flush(self) -> None:
        if self._flush_due is not None:
            self._flush_due.cancel()
            self._flush_due = None
        for labels, count in self._requests.items():
            REQUESTS.labels(*labels).inc(count)
        self._requests.clear()
        if any(self._latency.counts):
            self._latency.flush_into(LATENCY)
            self._latency = _Tally(LATENCY_BUCKETS)
        for stage, tally in self._stages.items():
            tally.flush_into(STAGE_LATENCY.labels(stage))
        self._stages.clear()
        if self._pending_outcomes is not None:
            AUDIT_PENDING_OUTCOMES.set(self._pending_outcomes)
            self._pending_outcomes = None
        for counter, gained in self._gained.items():
            counter.inc(gained)
        self._gained.clear()

    def _cache_counts(self, cache: DecisionCache) -> None:
        if cache is not self._cache:  # a reload brought a new engine with a new cache
            self._cache, self._hits, self._misses = cache, 0, 0
        hits, misses = cache.hits, cache.misses
        self._gained[CACHE_HITS] += max(hits - self._hits, 0)
        self._gained[CACHE_MISSES] += max(misses - self._misses, 0)
        self._hits, self._misses = max(hits, self._hits), max(misses, self._misses)

    def _jobs_counts(self, hits: int, misses: int) -> None:
        seen_hits, seen_misses = self._jobs
        self._gained[JOB_RECORD_HITS] += max(hits - seen_hits, 0)
        self._gained[JOB_RECORD_MISSES] += max(misses - seen_misses, 0)
        self._jobs = (max(hits, seen_hits), max(misses, seen_misses))

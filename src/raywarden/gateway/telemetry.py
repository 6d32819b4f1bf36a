"""The gateway's own Prometheus metrics (docs/metrics.md, "The gateway's metrics").

Every worker process updates them; with several workers, prometheus_client's multiprocess mode keeps each
process's values in files under ``PROMETHEUS_MULTIPROC_DIR`` and the supervisor (gateway/supervisor.py)
serves their sum on a loopback-only port. Labels stay few and bounded: an action of the route table, a
decision word, a status code, a stage name.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from raywarden.gateway.exchange import Exchange
from raywarden.policy.cache import DecisionCache

# From a fraction of a millisecond (a cached decision) to the upstream timeout's neighbourhood.
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
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


class RequestMetrics:
    """Counts one finished exchange; also carries the decision cache's counters into the metrics."""

    def __init__(self) -> None:
        self._cache: DecisionCache | None = None
        self._hits = self._misses = 0
        self._jobs = (0, 0)

    def observe(self, ex: Exchange, elapsed_s: float) -> None:
        REQUESTS.labels(ex.action or "none", ex.decision or "none", str(ex.status or 0)).inc()
        LATENCY.observe(elapsed_s)
        for stage, seconds in ex.stages.items():
            STAGE_LATENCY.labels(stage).observe(seconds)
        AUDIT_PENDING_OUTCOMES.set(ex.audit.queued)
        self._cache_counts(ex.engine.cache)

    def _cache_counts(self, cache: DecisionCache) -> None:
        if cache is not self._cache:  # a reload brought a new engine with a new cache
            self._cache, self._hits, self._misses = cache, 0, 0
        hits, misses = cache.hits, cache.misses
        if hits > self._hits:
            CACHE_HITS.inc(hits - self._hits)
        if misses > self._misses:
            CACHE_MISSES.inc(misses - self._misses)
        self._hits, self._misses = hits, misses

    def job_records(self, hits: int, misses: int) -> None:
        seen_hits, seen_misses = self._jobs
        if hits > seen_hits:
            JOB_RECORD_HITS.inc(hits - seen_hits)
        if misses > seen_misses:
            JOB_RECORD_MISSES.inc(misses - seen_misses)
        self._jobs = (hits, misses)

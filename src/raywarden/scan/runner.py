"""Run the probes over every endpoint with bounded concurrency and collect one ScanResult."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path

from raywarden.scan.errors import ScanError
from raywarden.scan.findings import EndpointReport, Finding, ScanResult, severity_rank
from raywarden.scan.http_answers import HTTP_PATHS
from raywarden.scan.probes import ProbeOptions, probe_endpoint
from raywarden.scan.targets import DEFAULT_MAX_HOSTS, ScanPlan, plan_scan

ProgressCallback = Callable[[int, int], None]

MAX_CONCURRENCY = 1024
MAX_TIMEOUT = 60.0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_limits(timeout: float, concurrency: int) -> None:
    if not 0 < timeout <= MAX_TIMEOUT:
        raise ScanError(f"timeout {timeout} is out of range", hint=f"use a value in (0, {MAX_TIMEOUT:g}] seconds")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ScanError(f"concurrency {concurrency} is out of range", hint=f"use 1-{MAX_CONCURRENCY}")


def _adjust_for_token_auth(findings: list[Finding]) -> list[Finding]:
    """Plaintext gRPC matters less on a host whose dashboard enforces token auth.

    Ray's token also guards its gRPC servers, so a stranger cannot call them, but the token still
    crosses that plaintext channel: medium rather than high.
    """
    token_hosts = {f.host for f in findings if f.id == "RW-TOKEN-AUTH-ON"}
    adjusted = []
    for f in findings:
        if f.id == "RW-GRPC-PLAINTEXT" and f.host in token_hosts:
            f = dataclasses.replace(
                f,
                severity="medium",
                evidence=f.evidence + "; this host's dashboard enforces token auth, so the token crosses "
                "this port in clear",
            )
        adjusted.append(f)
    return adjusted


def _sort_key(f: Finding) -> tuple[int, str, int, str]:
    return (-severity_rank(f.severity), f.host, f.port, f.id)


async def run_plan(
    plan: ScanPlan,
    *,
    timeout: float = 3.0,
    concurrency: int = 64,
    ca: Path | None = None,
    progress: ProgressCallback | None = None,
) -> ScanResult:
    """Probe every endpoint of ``plan``; at most ``concurrency`` endpoints are in flight at once."""
    check_limits(timeout, concurrency)
    result = ScanResult(targets=[s.raw for s in plan.specs], ports=list(plan.ports), started=_now())
    opts = ProbeOptions(timeout=timeout, ca=ca)
    total = plan.endpoint_count
    # Every request has its own timeout; this caps a server that answers each one slowly.
    endpoint_deadline = timeout * (len(HTTP_PATHS) + 4)
    endpoints = plan.endpoints()
    done = 0

    async def worker() -> None:
        nonlocal done
        # One shared iterator: a /16 never becomes 300,000 pending tasks at once.
        for ep in endpoints:
            try:
                outcome = await asyncio.wait_for(probe_endpoint(ep, opts), endpoint_deadline)
                result.endpoints.append(outcome.report)
                result.findings.extend(outcome.findings)
            except asyncio.TimeoutError:
                result.endpoints.append(
                    EndpointReport(
                        ep.host, ep.port, ep.target, state="error", detail=f"probes exceeded {endpoint_deadline:g}s"
                    )
                )
                result.errors.append(f"{ep.netloc}: probes exceeded {endpoint_deadline:g}s")
            except Exception as exc:  # one odd server must not end a range scan; it is reported instead
                result.endpoints.append(
                    EndpointReport(ep.host, ep.port, ep.target, state="error", detail=f"{type(exc).__name__}: {exc}")
                )
                result.errors.append(f"{ep.netloc}: internal error {type(exc).__name__}: {exc}")
            done += 1
            if progress is not None:
                progress(done, total)

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, total)))))
    if progress is not None:
        progress(total, total)
    result.findings = sorted(_adjust_for_token_auth(result.findings), key=_sort_key)
    result.endpoints.sort(key=lambda e: (e.host, e.port))
    for report in result.endpoints:
        if report.state == "error" and not any(report.host in err for err in result.errors):
            result.errors.append(f"{report.host}: {report.detail}")
    result.finished = _now()
    return result


async def scan_targets_async(
    targets: Iterable[str],
    ports: Iterable[int] | None = None,
    timeout: float = 3.0,
    concurrency: int = 64,
    *,
    max_hosts: int = DEFAULT_MAX_HOSTS,
    ca: Path | None = None,
    progress: ProgressCallback | None = None,
) -> ScanResult:
    """Async form of :func:`scan_targets`, for callers already inside an event loop."""
    check_limits(timeout, concurrency)
    plan = plan_scan(list(targets), None if ports is None else list(ports), max_hosts=max_hosts)
    return await run_plan(plan, timeout=timeout, concurrency=concurrency, ca=ca, progress=progress)


def scan_targets(
    targets: list[str],
    ports: list[int] | None = None,
    timeout: float = 3.0,
    concurrency: int = 64,
    *,
    max_hosts: int = DEFAULT_MAX_HOSTS,
    ca: Path | None = None,
    progress: ProgressCallback | None = None,
) -> ScanResult:
    """Scan ``targets`` (host, host:port, URL or CIDR) with read-only probes and return what was found.

    ``ports`` defaults to Ray's well-known ports and applies to targets that name no port. Raises
    ScanError for malformed targets or a range larger than ``max_hosts``; network failures are not
    errors, they appear in the result's endpoint reports. Must not be called from a running event
    loop (use :func:`scan_targets_async` there).
    """
    return asyncio.run(
        scan_targets_async(targets, ports, timeout, concurrency, max_hosts=max_hosts, ca=ca, progress=progress)
    )

"""Benchmark the audit log: durable appends/s under concurrent writers (group commit vs one fsync each),
and verification speed. Run: python bench/audit_bench.py [--json]"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from raywarden.audit import AuditLog, verify_log


def gateway_record(i: int) -> dict[str, Any]:
    """A record shaped like the gateway's request decisions (about 450 bytes on disk)."""
    return {
        "kind": "request",
        "principal": f"spiffe://raywarden.local/user/user{i % 50}",
        "action": "job.submit",
        "decision": "allow",
        "status": 200,
        "request_id": f"{i:032x}",
        "auth_method": "mtls",
        "resource": f"job/raysubmit_{i:016x}",
        "policy_ids": ["default.developers.submit"],
        "source": "10.0.0.5:51234",
        "latency_ms": 3.25,
        "reason": "permitted by policy",
    }


def run_async(audit_dir: Path, key: Ed25519PrivateKey, records: int, writers: int, **opts: int) -> dict[str, Any]:
    log = AuditLog.open(audit_dir, signing_key=key, **opts)

    async def writer(w: int) -> None:
        for i in range(w, records, writers):
            await log.append_async(gateway_record(i))

    async def main() -> None:
        await asyncio.gather(*(writer(w) for w in range(writers)))

    start = time.perf_counter()
    asyncio.run(main())
    elapsed = time.perf_counter() - start
    log.close()
    return _figures(records, elapsed, log.stats.batches)


def run_threads(audit_dir: Path, key: Ed25519PrivateKey, records: int, writers: int, **opts: int) -> dict[str, Any]:
    log = AuditLog.open(audit_dir, signing_key=key, **opts)

    def writer(w: int) -> None:
        for i in range(w, records, writers):
            log.append(gateway_record(i))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    log.close()
    return _figures(records, elapsed, log.stats.batches)


def _figures(records: int, elapsed: float, batches: int) -> dict[str, Any]:
    return {
        "records": records,
        "seconds": round(elapsed, 3),
        "per_second": round(records / elapsed),
        "fsyncs": batches,
        "avg_batch": round(records / max(batches, 1), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--writers", type=int, default=32, help="concurrent writers (default 32)")
    parser.add_argument("--records", type=int, default=64_000, help="records per group-commit run")
    parser.add_argument("--baseline-records", type=int, default=8_000, help="records for the one-fsync-each run")
    parser.add_argument("--verify-records", type=int, default=300_000, help="log size for the verify run")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir under /tmp)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="audit-bench-", dir=args.dir))
    key = Ed25519PrivateKey.generate()
    results: dict[str, Any] = {"writers": args.writers, "dir": str(base)}
    try:
        results["group_commit_asyncio"] = run_async(base / "a", key, args.records, args.writers)
        results["group_commit_threads"] = run_threads(base / "t", key, args.records, args.writers)
        results["baseline_fsync_per_record_threads"] = run_threads(
            base / "b", key, args.baseline_records, args.writers, max_batch=1
        )
        # Build a large log quickly with group commit, then time a full verification of it.
        run_async(base / "v", key, args.verify_records, args.writers)
        start = time.perf_counter()
        report = verify_log(base / "v", public_key=key.public_key())
        elapsed = time.perf_counter() - start
        results["verify"] = {
            "records": report.records,
            "seconds": round(elapsed, 3),
            "per_second": round(report.records / elapsed),
            "checkpoints": report.checkpoints,
        }
        best = max(results["group_commit_asyncio"]["per_second"], results["group_commit_threads"]["per_second"])
        results["group_commit_speedup"] = round(best / results["baseline_fsync_per_record_threads"]["per_second"], 1)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"audit bench: {args.writers} concurrent writers, durable (fsync) appends, dir {base}")
    for name, label in (
        ("group_commit_asyncio", "group commit, asyncio tasks   "),
        ("group_commit_threads", "group commit, threads         "),
        ("baseline_fsync_per_record_threads", "baseline, one fsync per record"),
    ):
        r = results[name]
        print(
            f"  {label}: {r['records']:>7} records in {r['seconds']:6.2f} s = {r['per_second']:>8,} appends/s "
            f"({r['fsyncs']} fsyncs, {r['avg_batch']} records each)"
        )
    print(f"  group commit speed-up over baseline: {results['group_commit_speedup']}x")
    v = results["verify"]
    print(
        f"  verify: {v['records']:>7} records in {v['seconds']:6.2f} s = {v['per_second']:>8,} records/s "
        f"({v['checkpoints']} checkpoints)"
    )


if __name__ == "__main__":
    main()

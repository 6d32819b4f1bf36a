"""Several gateway workers writing one audit history: each its own writer (``flock`` and the chain head picked
up from disk, audit/writer.py; what the gateway does) against one writer process fed over local sockets
(bench/audit_service.py).

    python bench/audit_workers_bench.py [--workers 2] [--concurrency 1 16] [--seconds 3] [--rounds 3]

Each worker runs ``concurrency`` request loops: the decision record awaited until durable, then the outcome
record submitted without waiting, as the gateway does. Printed per mode: requests per second (all workers),
p50 and p99 of the wait for the decision record, records per fsync, and CPU time per request of every process
involved (the writer process included), which a busy machine does not distort. Rounds alternate the modes.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from raywarden.audit import AuditLog
from raywarden.gateway.auditsink import LocalAudit

sys.path.insert(0, str(Path(__file__).parent))
from audit_service import AuditClient, AuditService


def record(i: int, kind: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "request_id": f"{os.getpid()}-{i}",
        "method": "GET",
        "path": "/api/jobs/raysubmit_abc",
        "principal": "spiffe://bench/user/alice",
        "action": "jobs.read",
        "decision": "allow",
        "status": 200,
        "latency_ms": 0.5,
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    }


async def requests(sink: Any, concurrency: int, seconds: float) -> tuple[int, list[float], int]:
    waits: list[float] = []
    done = 0
    deadline = time.monotonic() + seconds

    async def loop() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            started = time.perf_counter()
            await sink.append_async(record(done, "request"))
            waits.append(time.perf_counter() - started)
            await asyncio.sleep(0)  # the forward to Ray would go here
            sink.append_later(record(done, "outcome"))
            done += 1

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    await sink.drain()
    return done, waits, 0


def worker(mode: str, folder: str, key: bytes, fd: int, concurrency: int, seconds: float, out: Any) -> None:
    async def run() -> tuple[int, list[float], int]:
        if mode == "flock":
            log = AuditLog.open(Path(folder), signing_key=Ed25519PrivateKey.from_private_bytes(key))
            try:
                done, waits, _ = await requests(LocalAudit(log), concurrency, seconds)
            finally:
                log.close()
            return done, waits, log.stats.batches
        client = AuditClient(socket.socket(fileno=fd))
        await client.start()
        try:
            return await requests(client, concurrency, seconds)
        finally:
            await client.close()

    started = time.process_time()
    done, waits, batches = asyncio.run(run())
    out.put((done, waits, time.process_time() - started, batches))


def writer_process(folder: str, key: bytes, fds: list[int], out: Any, stop: Any) -> None:
    async def run() -> None:
        log = AuditLog.open(Path(folder), signing_key=Ed25519PrivateKey.from_private_bytes(key))
        service = AuditService(log)
        # Forked processes hold copies of every socket, so no end of file ever comes: stop when told.
        serving = [asyncio.ensure_future(service.serve(socket.socket(fileno=fd))) for fd in fds]
        try:
            while not stop.is_set():
                await asyncio.sleep(0.05)
        finally:
            for task in serving:
                task.cancel()
            log.close()
            out.put(("batches", log.stats.batches, log.stats.records))

    started = time.process_time()
    asyncio.run(run())
    out.put(("cpu", time.process_time() - started))


def one(mode: str, workers: int, concurrency: int, seconds: float) -> dict[str, float]:
    key = Ed25519PrivateKey.generate().private_bytes_raw()
    ctx = mp.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as folder:
        out = ctx.Queue()
        writer_out = ctx.Queue()
        pairs = [socket.socketpair() for _ in range(workers)] if mode == "service" else []
        writer = None
        stop = ctx.Event()
        if mode == "service":
            writer = ctx.Process(
                target=writer_process, args=(folder, key, [p[0].fileno() for p in pairs], writer_out, stop)
            )
            writer.start()
        procs = [
            ctx.Process(
                target=worker,
                args=(mode, folder, key, pairs[i][1].fileno() if pairs else -1, concurrency, seconds, out),
            )
            for i in range(workers)
        ]
        if mode == "flock":  # every worker writes the log: make it exist before they race to create it
            AuditLog.open(Path(folder), signing_key=Ed25519PrivateKey.from_private_bytes(key)).close()
        wall = time.monotonic()
        for p in procs:
            p.start()
        results = [out.get() for _ in procs]
        wall = time.monotonic() - wall
        for p in procs:
            p.join()
        stop.set()
        for a, b in pairs:
            a.close()
            b.close()
        cpu = sum(r[2] for r in results)
        batches = sum(r[3] for r in results)
        if writer is not None:
            for item in (writer_out.get(), writer_out.get()):
                if item[0] == "cpu":
                    cpu += item[1]
                else:
                    batches = item[1]
            writer.join()
        records = sum(1 for p in Path(folder).glob("audit-*.jsonl") for _ in p.open())
        done = sum(r[0] for r in results)
        waits = sorted(w for r in results for w in r[1])
        return {
            "rps": done / wall,
            "p50_ms": statistics.median(waits) * 1000,
            "p99_ms": waits[int(len(waits) * 0.99)] * 1000,
            "per_fsync": records / batches if batches else float("nan"),
            "cpu_us": cpu / done * 1e6,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    for concurrency in args.concurrency:
        found: dict[str, list[dict[str, float]]] = {"flock": [], "service": []}
        for r in range(args.rounds):
            for mode in ("flock", "service") if r % 2 == 0 else ("service", "flock"):
                found[mode].append(one(mode, args.workers, concurrency, args.seconds))
        print(f"\n{args.workers} workers x {concurrency} concurrent requests (medians of {args.rounds} rounds)")
        print("| mode | req/s | decision wait p50 | p99 | records per fsync | cpu us/request |")
        print("|---|---|---|---|---|---|")
        for mode, runs in found.items():
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(
                f"| {mode} | {med['rps']:.0f} | {med['p50_ms']:.2f} ms | {med['p99_ms']:.2f} ms | "
                f"{med['per_fsync']:.1f} | {med['cpu_us']:.0f} |"
            )
    print(f"\nload average after: {os.getloadavg()}", file=sys.stderr)


if __name__ == "__main__":
    main()

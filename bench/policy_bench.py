"""Policy decision latency as the gateway pays it: entities and context built from Ray-shaped job JSON and
submission bodies, then PolicyEngine.decide (one request) or decide_many (a job list).

    python bench/policy_bench.py [--decisions 10000] [--baseline DIR] [--clock wall|cpu] [--json]

Per action group, p50 and p99 of a cold decision (an engine without a decision cache: every decision is
Cedar's own evaluation) and of a warm one (the answer is in the cache; the bench checks that every measured
warm decision was a hit). No two requests are alike: each has its own job or submission id, entrypoint,
source address and time, so a warm decision is a hit only because the default pack does not read what
differs. Then one developer's per-job view of 1,000 and 10,000 jobs as the gateway filters Ray's job list
(a ``jobs.read`` and a ``jobs.read_env`` decision per job, entities built from the job JSON, JSON parsing
excluded): cold (the first view after a reload, empty cache) and warm (the next one).

--baseline DIR measures another revision in the same run, in a subprocess importing DIR/src, e.g. the
compiled evaluator this engine replaced: ``git archive c89f4c4 | tar -x -C DIR``. Ratios are new / baseline.
--clock cpu times each decision in this thread's CPU time rather than wall time: on a machine busy with
other work, wall-time percentiles measure the scheduler, CPU time still measures the decision.
Before measuring, every engine must decide the first requests of each group exactly as the strict path
(Cedar with every policy, every attribute and the schema).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raywarden.policy.engine import CLUSTER_ID, Entity, PolicyEngine, PolicyRequest, default_policy_files
from raywarden.policy.entities import (
    cluster_entity,
    job_entity,
    new_job_entity,
    package_entity,
    principal_entity,
    request_context_at,
)
from raywarden.policy.jobattrs import job_entity_id

TD = "bench.raywarden"
ALICE = principal_entity(f"spiffe://{TD}/user/alice", "user", "alice", ("developers",))
VERA = principal_entity(f"spiffe://{TD}/user/vera", "user", "vera", ("viewers",))
OWNERS = [f"spiffe://{TD}/user/{name}" for name in ("alice", "bob", "carol", "dan")]
GROUPS: dict[str, list[tuple[Entity, str]]] = {
    "cluster-wide": [(ALICE, "cluster.version"), (ALICE, "jobs.list"), (VERA, "dashboard.view")],
    "job read": [(ALICE, "jobs.read"), (ALICE, "jobs.read_env"), (VERA, "jobs.logs")],
    "job change": [(ALICE, "jobs.stop"), (ALICE, "jobs.delete")],
    "job submit": [(ALICE, "jobs.submit")],
    "package": [(ALICE, "packages.upload"), (ALICE, "packages.read")],
}
Request = Callable[[], PolicyRequest]
CLOCKS = {"wall": time.perf_counter_ns, "cpu": time.thread_time_ns}
clock = CLOCKS["wall"]


def ray_job(i: int, owner: str | None) -> dict[str, Any]:
    """One entry of Ray's job list (GET /api/jobs/), as the gateway reads it."""
    return {
        "type": "SUBMISSION",
        "job_id": f"{i:08x}",
        "submission_id": f"raysubmit_{i:08x}",
        "driver_info": {"id": f"{i:08x}", "node_ip_address": "127.0.0.1", "pid": str(1000 + i)},
        "status": "RUNNING" if i % 3 else "SUCCEEDED",
        "entrypoint": f"python train.py --seed {i}",
        "message": "Job is currently running.",
        "error_type": None,
        "start_time": 1_700_000_000_000 + i,
        "end_time": None,
        "metadata": {"raywarden.owner": owner} if owner else {},
        "runtime_env": {"pip": {"packages": ["torch"]}, "env_vars": {"OMP_NUM_THREADS": "4"}},
        "driver_agent_http_address": "http://127.0.0.1:52365",
        "driver_node_id": "f" * 56,
    }


def submission(i: int) -> dict[str, Any]:
    return {
        "submission_id": f"sub-{i}",
        "entrypoint": f"python train.py --seed {i}",
        "entrypoint_num_cpus": 2,
        "runtime_env": {
            "working_dir": f"gcs://_ray_pkg_{i:016x}.zip",
            "pip": {"packages": ["torch==2.4.0", "numpy>=1.26", "requests"], "pip_check": False},
            "env_vars": {"OMP_NUM_THREADS": str(i % 64 + 1)},
            "_ray_commit": "b7f4259e",
        },
    }


def resource_builder(group: str, i: int) -> Callable[[], Entity]:
    """How the gateway gets request ``i``'s resource: from the path, the submission body or Ray's job JSON."""
    if group == "cluster-wide":
        return lambda: Entity("Cluster", CLUSTER_ID)
    if group == "job submit":
        body = submission(i)
        return lambda: new_job_entity(body, ALICE.id)
    if group == "package":
        return lambda: package_entity(f"_ray_pkg_{i:016x}.zip")
    job = ray_job(i, OWNERS[i % len(OWNERS)])
    return lambda: job_entity(job_entity_id(job, "?"), job)


def requests_for(group: str, count: int) -> list[Request]:
    """``count`` requests of one group, each building its resource and context from scratch when called."""
    start = time.time()
    made: list[Request] = []
    shapes = GROUPS[group]
    for i in range(count):
        who, action = shapes[i % len(shapes)]
        source, moment, age = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", start + i * 0.001, 60 + i % 600
        build = resource_builder(group, i)

        def request(
            who: Entity = who,
            action: str = action,
            build: Callable[[], Entity] = build,
            source: str = source,
            moment: float = moment,
            age: int = age,
        ) -> PolicyRequest:
            return PolicyRequest(who, action, build(), request_context_at("certificate", source, age, moment))

        made.append(request)
    return made


def engine_for(variant: str) -> PolicyEngine:
    files, cluster = default_policy_files(), cluster_entity(None)
    options = inspect.signature(PolicyEngine.from_sources).parameters
    if variant == "cold" and "cache_size" in options:
        return PolicyEngine.from_sources(files, cluster, cache_size=0)
    if variant == "cedar" and "compiled" in options:  # c89f4c4's path with every decision through Cedar
        return PolicyEngine.from_sources(files, cluster, compiled=False)
    return PolicyEngine.from_sources(files, cluster)


def check(engine: PolicyEngine, requests: list[Request]) -> None:
    for make in requests[:200]:
        request = make()
        fast, strict = engine.decide(request), engine.decide(request, strict=True)
        if fast != strict:
            raise SystemExit(f"{request.action}: the gateway's path decided {fast}, the strict path {strict}")


def percentiles(samples: list[int]) -> dict[str, float]:
    samples.sort()
    return {"p50_us": samples[len(samples) // 2] / 1000, "p99_us": samples[int(len(samples) * 0.99)] / 1000}


def measure(engine: PolicyEngine, requests: list[Request], warm: bool) -> dict[str, float]:
    """p50/p99 of building a request and deciding it, and of the decision alone."""
    for make in requests[:1000]:  # warm-up: allocator, branch predictors, and for warm figures the cache
        engine.decide(make())
    cache = getattr(engine, "cache", None)
    hits_before = cache.hits if cache is not None else 0
    total, deciding = [], []
    for make in requests[1000:]:
        begin = clock()
        request = make()
        built = clock()
        engine.decide(request)
        end = clock()
        total.append(end - begin)
        deciding.append(end - built)
    hits = (cache.hits - hits_before) if cache is not None else 0
    if warm and cache is not None and hits != len(total):
        raise SystemExit(f"only {hits} of {len(total)} warm decisions were cache hits")
    alone = percentiles(deciding)
    return {**percentiles(total), "decide_p50_us": alone["p50_us"], "decide_p99_us": alone["p99_us"]}


def view_jobs(count: int) -> list[dict[str, Any]]:
    """Ray's job list for one developer's view: 5% theirs, 10% without an owner, the rest of 200 others."""
    others = [f"spiffe://{TD}/user/u{n}" for n in range(200)]
    return [ray_job(i, OWNERS[0] if i % 20 == 0 else None if i % 10 == 1 else others[i % 200]) for i in range(count)]


def view(engine: PolicyEngine, jobs: list[dict[str, Any]]) -> int:
    """As the gateway filters a job list: entities from the job JSON, two decisions per job, one batch
    (``decide_each`` where the engine has it, else ``decide_many`` over one request per decision)."""
    context = request_context_at("certificate", "10.1.2.3", 60, time.time())
    entities = [job_entity(job_entity_id(job, f"(job {i})"), job) for i, job in enumerate(jobs)]
    actions = ("jobs.read", "jobs.read_env")
    if hasattr(engine, "decide_each"):
        return sum(read.allowed for read, _ in engine.decide_each(ALICE, context, actions, entities))
    requests = [PolicyRequest(ALICE, action, entity, context) for entity in entities for action in actions]
    return sum(d.allowed for d in engine.decide_many(requests)[::2])


def measure_view(count: int, variant: str) -> dict[str, float]:
    jobs = view_jobs(count)
    rounds = 7 if count <= 1000 else 5
    cold, warm = [], []
    for _ in range(rounds):
        engine = engine_for(variant)  # a fresh engine is what a reload gives: an empty cache
        begin = clock()
        shown = view(engine, jobs)
        cold.append(clock() - begin)
        begin = clock()
        if view(engine, jobs) != shown or shown != (count + 19) // 20:
            raise SystemExit("the per-job view changed between two reads")
        warm.append(clock() - begin)
    return {"cold_ms": sorted(cold)[rounds // 2] / 1e6, "warm_ms": sorted(warm)[rounds // 2] / 1e6}


def run(decisions: int, variant: str) -> dict[str, Any]:
    """``variant`` "gateway": the gateway's path, cold (no cache, where the engine has one) and warm; "cedar":
    a baseline's path with every decision through Cedar, if it has such a switch."""
    groups = {}
    for group in GROUPS:
        requests = requests_for(group, decisions + 1000)
        cold = engine_for("cold" if variant == "gateway" else variant)
        warm = engine_for(variant)
        check(cold, requests)
        check(warm, requests)
        groups[group] = {"cold": measure(cold, requests, False), "warm": measure(warm, requests, variant == "gateway")}
    views = {str(n): measure_view(n, variant) for n in (1000, 10_000)}
    return {"groups": groups, "views": views}


def baseline(directory: Path, decisions: int, clock_name: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(directory / "src")}
    done = subprocess.run(
        [sys.executable, __file__, "--emit", "--decisions", str(decisions), "--clock", clock_name],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the baseline in {directory} failed:\n{done.stderr[-2000:]}")
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def report(new: dict[str, Any], old: dict[str, Any] | None) -> None:
    print(f"{'decision, us':14} {'cold p50':>9} {'cold p99':>9} {'warm p50':>9} {'warm p99':>9}", end="")
    print(f" {'decide p50':>11} {'decide p99':>11}")
    for group, row in new["groups"].items():
        cold, warm = row["cold"], row["warm"]
        cells = [cold["p50_us"], cold["p99_us"], warm["p50_us"], warm["p99_us"]]
        line = f"{group:14} " + " ".join(f"{c:9.1f}" for c in cells)
        print(line + f" {warm['decide_p50_us']:11.1f} {warm['decide_p99_us']:11.1f}")
    print("(request building included; decide: the warm decision alone, without building its entities)")
    if old:
        then, cedar = old["gateway"]["groups"], (old.get("cedar") or {}).get("groups")
        print(f"\nbaseline       {'warm/base':>9} {'cold/Cedar':>10} {'base p50':>9} {'base p99':>9}", end="")
        print(f" {'Cedar p50':>9} {'Cedar p99':>9}" if cedar else "")
        for group, row in new["groups"].items():
            base = then[group]["warm"]
            line = f"{group:14} {row['warm']['p99_us'] / base['p99_us']:9.2f} "
            line += f"{row['cold']['p99_us'] / cedar[group]['cold']['p99_us']:10.2f} " if cedar else f"{'':10} "
            line += f"{base['p50_us']:9.1f} {base['p99_us']:9.1f}"
            if cedar:
                line += f" {cedar[group]['cold']['p50_us']:9.1f} {cedar[group]['cold']['p99_us']:9.1f}"
            print(line)
        print("(ratios of p99: warm / the baseline's gateway path; cold / the baseline's Cedar path)")
    print(f"\n{'per-job view, ms':17} {'cold':>8} {'warm':>8}", end="")
    print(f" {'cold/base':>9} {'warm/base':>9} {'base':>8}" if old else "")
    for count, row in new["views"].items():
        line = f"{int(count):>6,} jobs      {row['cold_ms']:8.1f} {row['warm_ms']:8.1f}"
        if old:
            base = old["gateway"]["views"][count]["warm_ms"]
            line += f" {row['cold_ms'] / base:9.2f} {row['warm_ms'] / base:9.2f} {base:8.1f}"
        print(line)
    worst = max(row["warm"]["p99_us"] for row in new["groups"].values())
    alone = max(row["warm"]["decide_p99_us"] for row in new["groups"].values())
    big = new["views"]["10000"]["warm_ms"]
    print(
        f"\ntarget warm p99 <= 20 us: {'met' if worst <= 20 else 'NOT met'} (worst group {worst:.1f} us with its "
        f"entities built, {alone:.1f} us the decision alone)"
    )
    print(f"target 10,000-job view <= 50 ms: {'met' if big <= 50 else 'NOT met'} (warm {big:.1f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--decisions", type=int, default=10_000, help="measured decisions per group (>= 10000)")
    parser.add_argument("--baseline", type=Path, help="a source tree to measure in the same run (DIR/src)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="wall time (default) or CPU time")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--emit", action="store_true", help=argparse.SUPPRESS)  # the baseline's subprocess
    args = parser.parse_args()
    if args.decisions < 10_000:
        parser.error("measure at least 10000 decisions")
    global clock
    clock = CLOCKS[args.clock]
    if args.emit:  # whatever raywarden this interpreter imports: its gateway path, and its Cedar path if any
        options = inspect.signature(PolicyEngine.from_sources).parameters
        emitted = {"gateway": run(args.decisions, "gateway")}
        if "compiled" in options:
            emitted["cedar"] = run(args.decisions, "cedar")
        json.dump(emitted, sys.stdout)
        return
    old = baseline(args.baseline, args.decisions, args.clock) if args.baseline else None
    new = run(args.decisions, "gateway")
    if args.json:
        json.dump({"new": new, "baseline": old}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    print(f"clock: {args.clock} time\n")
    report(new, old)


if __name__ == "__main__":
    main()

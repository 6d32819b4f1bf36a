"""Policy decision latency as the gateway pays it: entity and context building plus the Cedar decision.

Runs in one process, like the gateway's request path (raywarden.gateway.resources + PolicyEngine.decide),
without the network: the upstream lookup of a job's owner is Ray's time, not the decision's.

    python bench/policy_bench.py [--decisions 10000] [--json]

Policy sets: the shipped default pack, and sets of 1, 50 and 500 policies (the pack plus generated operator
policies that each inspect attributes, so the evaluator cannot skip them by their scope alone).

No two decisions are alike: every one has its own job id, submission id, entrypoint, job owner, working_dir
package, source address and time, so that nothing keyed on a request can answer from memory. The engine
caches only what is fixed per policy set (the compiled policies, the cluster's limits) and, on Cedar's path,
per identity; package requirements are parsed through the lru_cache that jobattrs has always had, as a
gateway that sees the same packages would. Before measuring, every request shape is decided on both paths
and must agree: the gateway's path (policies compiled to Python, raywarden.policy.compiled) and the strict
path, Cedar itself through cedarpy with the schema, every policy and every attribute. The "by Cedar" column
counts the measured decisions that the compiled path left to Cedar (an evaluation error): none, here.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from raywarden.gateway.authn import Identity
from raywarden.gateway.authz import context_for, principal_for
from raywarden.policy.engine import PolicyEngine, PolicyRequest, default_policy_files
from raywarden.policy.entities import cluster_entity, job_entity, new_job_entity

TD = "bench.raywarden"
ADMIN_ONLY = [("default/admins.cedar", dict(default_policy_files())["default/admins.cedar"])]


def generated(count: int) -> list[tuple[str, str]]:
    """``count`` operator policies for teams that the benchmark's principals are not in."""
    rules = [
        'permit (principal in Raywarden::Group::"team-{i}", action == Raywarden::Action::"jobs.submit", '
        "resource is Raywarden::NewJob) when {{ resource.entrypoint_milli_cpus <= {cpus} && "
        "!resource.runtime_env.container && resource.runtime_env.pip_options.isEmpty() }};",
        'forbid (principal in Raywarden::Group::"team-{i}", action, resource) '
        'unless {{ context.source.isInRange(ip("10.{j}.0.0/16")) }};',
        'permit (principal in Raywarden::Group::"team-{i}", action in [Raywarden::Action::"jobs.read", '
        'Raywarden::Action::"jobs.logs"], resource is Raywarden::Job) when {{ resource.status == "RUNNING" && '
        "context.auth_age_s < {age} }};",
    ]
    text = "\n".join(
        f'@id("ops-{i}")\n' + rules[i % 3].format(i=i, j=i % 250, cpus=(i % 8 + 1) * 1000, age=3600 + i)
        for i in range(count)
    )
    return [("ops/generated.cedar", text)] if count else []


def policy_sets() -> dict[str, list[tuple[str, str]]]:
    pack = default_policy_files()
    return {
        "default pack": pack,
        "1 policy": ADMIN_ONLY,
        "50 policies": pack + generated(50 - len(pack)),
        "500 policies": pack + generated(500 - len(pack)),
    }


def certificate_der() -> bytes:
    """A client certificate, so that credential age is read from a real one as in the gateway."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.DER)


def workload(der: bytes, count: int) -> list[Callable[[PolicyEngine, bool], Any]]:
    """``count`` decisions in four shapes the gateway decides all day, each building its entities from scratch."""
    # The authenticator gives an identity its credential's issue time (a certificate's notBefore).
    issued = x509.load_der_x509_certificate(der).not_valid_before_utc.timestamp()
    alice = Identity(f"spiffe://{TD}/user/alice", "user", "alice", ("developers",), "certificate", "01", issued)
    vera = Identity(f"spiffe://{TD}/user/vera", "user", "vera", ("viewers",), "certificate", "02", issued)

    def ray_job(i: int, owner: str) -> dict[str, Any]:
        return {
            "submission_id": f"raysubmit_{i:08x}",
            "job_id": f"{i:08x}",
            "status": "RUNNING",
            "type": "SUBMISSION",
            "entrypoint": f"python train.py --seed {i}",
            "metadata": {"raywarden.owner": owner},
            "runtime_env": {"pip": {"packages": ["torch"]}},
        }

    def body(i: int) -> dict[str, Any]:
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

    def decide(
        identity: Identity, action: str, build: Callable[[], Any], source: str, now: float
    ) -> Callable[[PolicyEngine, bool], Any]:
        def run(engine: PolicyEngine, strict: bool = False) -> Any:
            context = context_for(identity, source, now)
            return engine.decide(PolicyRequest(principal_for(identity), action, build(), context), strict=strict)

        return run

    start = time.time()
    runs = []
    for i in range(count):
        source, now = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", start + i * 0.001
        job_id, mine, other = f"raysubmit_{i:08x}", ray_job(i, alice.spiffe_id), ray_job(i, f"spiffe://{TD}/user/u{i}")
        submission = body(i)
        shape = i % 4
        if shape == 0:
            runs.append(decide(alice, "jobs.read", lambda j=job_id, info=mine: job_entity(j, info), source, now))
        elif shape == 1:
            runs.append(decide(alice, "jobs.stop", lambda j=job_id, info=other: job_entity(j, info), source, now))
        elif shape == 2:
            runs.append(
                decide(alice, "jobs.submit", lambda b=submission: new_job_entity(b, alice.spiffe_id), source, now)
            )
        else:
            runs.append(decide(vera, "jobs.logs", lambda j=job_id, info=mine: job_entity(j, info), source, now))
    return runs


def check(engine: PolicyEngine, requests: list[Callable[[PolicyEngine, bool], Any]]) -> None:
    """The fast path must decide exactly as the strict path (every policy, every attribute, schema-checked)."""
    for run in requests[:400]:
        fast, strict = run(engine, False), run(engine, True)
        if fast != strict:
            raise SystemExit(f"fast path {fast} differs from strict path {strict}")


def measure(engine: PolicyEngine, requests: list[Callable[[PolicyEngine, bool], Any]]) -> dict[str, float]:
    for run in requests[:1000]:  # warm-up: caches, allocator, branch predictors
        run(engine, False)
    requests = requests[1000:]
    handed_over = engine.decided_by_cedar
    samples = []
    for run in requests:
        start = time.perf_counter_ns()
        run(engine, False)
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    count = len(samples)
    return {
        "decisions": count,
        "p50_us": samples[count // 2] / 1000,
        "p99_us": samples[int(count * 0.99)] / 1000,
        "mean_us": statistics.fmean(samples) / 1000,
        "max_us": samples[-1] / 1000,
        "decided_by_cedar": engine.decided_by_cedar - handed_over,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--decisions", type=int, default=10_000, help="decisions per policy set (>= 10000)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    if args.decisions < 10_000:
        parser.error("measure at least 10000 decisions")
    requests = workload(certificate_der(), args.decisions + 1000)
    results: dict[str, Any] = {}
    for label, files in policy_sets().items():
        for path, compiled in (("", True), (" (Cedar)", False)):
            engine = PolicyEngine.from_sources(files, cluster_entity(None), compiled=compiled)
            check(engine, requests)
            results[label + path] = {"policies": len(engine.policies), **measure(engine, requests)}
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    print(
        f"{'policy set':23} {'policies':>8} {'decisions':>9} {'p50 us':>8} {'p99 us':>8} {'mean us':>8} {'by Cedar':>8}"
    )
    for label, row in results.items():
        print(
            f"{label:23} {row['policies']:>8} {row['decisions']:>9} {row['p50_us']:>8.1f} {row['p99_us']:>8.1f} "
            f"{row['mean_us']:>8.1f} {row['decided_by_cedar']:>8}"
        )
    for label in policy_sets():
        fast, cedar = results[label], results[label + " (Cedar)"]
        print(
            f"{label}: compiled path / Cedar's path: p50 {fast['p50_us'] / cedar['p50_us']:.2f}, "
            f"p99 {fast['p99_us'] / cedar['p99_us']:.2f}"
        )
    default_p99 = results["default pack"]["p99_us"]
    print(
        f"target: p99 <= 100 us with the default pack: {'met' if default_p99 <= 100 else 'NOT met'} "
        f"({default_p99:.1f} us)"
    )


if __name__ == "__main__":
    main()

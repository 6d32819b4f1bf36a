"""The gateway against Ray's own dashboard, side by side in one run: added latency, throughput, CPU per request.

    python bench/gateway_bench.py                          # this build only
    git archive c89f4c4 | tar -x -C /tmp/rw-old
    python bench/gateway_bench.py --baseline /tmp/rw-old   # and an older build, interleaved
    python bench/gateway_bench.py --jobs 10000             # also a developer's list of 10,000 jobs

One Ray cluster is started with this build (`raywarden up`). "direct" is Ray's loopback dashboard with Ray's
token; "new" is this build's gateway with the admin's client certificate; "old" (``--baseline DIR``) is the
gateway of the source tree in DIR, started by its own code on its own state dir (initialised by that code,
same trust domain) in front of the same Ray, with Ray's token copied in. The old tree runs on this
interpreter and these dependency versions (PYTHONPATH=DIR/src), so that only raywarden's code differs; it
runs asyncio's own loop and h11 as it always did, whatever else is installed.

Targets are measured in rotating order, round after round, so that load on the machine falls on all of them
alike; the figures to quote are the ratios. "cpu us/req" is the CPU time the gateway's processes (or Ray's
dashboard, for direct) spent per request, read from /proc: it does not depend on how busy the machine is.

``--jobs N`` fills Ray's job table with N finished jobs through Ray's own job-info storage client
(JobInfoStorageClient over the GCS, with the node's certificate and Ray's token: the bench only; the gateway
never touches the GCS), owned by 20 users, and times the list as a developer who owns 1 in 20 of them sees it
through the gateway, against Ray's own list, direct.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import requests

from raywarden.cluster import lifecycle, runstate
from raywarden.cluster.setup import init_state
from raywarden.config import ClusterConfig, Listen
from raywarden.gateway.owner_seal import SEAL_KEY, OwnerSeal
from raywarden.gateway.runinfo import workers_file
from raywarden.identity.store import IdentityStore
from raywarden.pki.spiffe import SpiffeId
from raywarden.policy.jobattrs import OWNER_KEY
from raywarden.state import StateDir

TD = "bench.raywarden"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str]
    ssl: ssl.SSLContext | None
    pids: Any  # () -> list[int]: the processes whose CPU time counts
    lat: dict[str, list[float]] = field(default_factory=dict)
    rps: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    client_cpu: dict[str, list[float]] = field(default_factory=dict)
    busy: dict[str, list[float]] = field(default_factory=dict)


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return total


def machine_busy() -> tuple[float, float]:
    """Seconds every core spent busy and in all, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / tick, sum(fields) / tick


def children(pid: int) -> list[int]:
    found = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry.name))
    return found


async def latency(session: aiohttp.ClientSession, target: Target, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        async with session.get(target.url + path, headers=target.headers) as resp:
            await resp.read()
            if resp.status != 200:
                raise SystemExit(f"{target.name} {path}: {resp.status}")
        out.append(time.perf_counter() - started)
    return out


async def throughput(session: aiohttp.ClientSession, target: Target, path: str, clients: int, seconds: float) -> int:
    done = 0
    deadline = time.perf_counter() + seconds

    async def one() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            async with session.get(target.url + path, headers=target.headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise SystemExit(f"{target.name} {path}: {resp.status}")
            done += 1

    await asyncio.gather(*(one() for _ in range(clients)))
    return done


async def measure(targets: list[Target], job: str, rounds: int, n: int, seconds: float, clients: int) -> None:
    # Idle connections are dropped after 2 s, before a server's own keep-alive timeout (uvicorn's is 5 s) can
    # close one just as a request goes out on it.
    sessions = {
        t.name: aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=clients, ssl=t.ssl or False, keepalive_timeout=2.0)
        )
        for t in targets
    }
    try:
        for t in targets:  # warm up: connections, caches, the job's record
            await latency(sessions[t.name], t, "/api/version", 20)
            await latency(sessions[t.name], t, f"/api/jobs/{job}", 20)
        for r in range(rounds):
            order = targets[r % len(targets) :] + targets[: r % len(targets)]
            for path_name, path in (("version", "/api/version"), ("job", f"/api/jobs/{job}")):
                for t in order:
                    t.lat.setdefault(path_name, []).extend(await latency(sessions[t.name], t, path, n))
            for path_name, path in (("version", "/api/version"), ("jobs", "/api/jobs/"), ("job", f"/api/jobs/{job}")):
                for t in order:
                    pids = t.pids()
                    before = cpu_seconds(pids)
                    own = time.process_time()
                    busy, total = machine_busy()
                    started = time.perf_counter()
                    count = await throughput(sessions[t.name], t, path, clients, seconds)
                    elapsed = time.perf_counter() - started
                    busy_after, total_after = machine_busy()
                    t.rps.setdefault(path_name, []).append(count / elapsed)
                    t.cpu.setdefault(path_name, []).append((cpu_seconds(pids) - before) / count * 1e6)
                    t.client_cpu.setdefault(path_name, []).append((time.process_time() - own) / count * 1e6)
                    t.busy.setdefault(path_name, []).append((busy_after - busy) / max(total_after - total, 1e-9))
            print(f"round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    finally:
        for s in sessions.values():
            await s.close()


def p50(values: list[float]) -> float:
    return statistics.median(values) * 1000


def report(targets: list[Target], clients: int) -> None:
    direct = targets[0]
    names = [t.name for t in targets]
    print(f"\n| | {' | '.join(names)} |")
    print("|---" * (len(names) + 1) + "|")
    for key, label in (("version", "`GET /api/version`"), ("job", "`GET /api/jobs/{id}`")):
        base = p50(direct.lat[key])
        cells = [f"{base:.2f} ms"] + [
            f"{p50(t.lat[key]):.2f} ms (+{p50(t.lat[key]) - base:.2f} ms)" for t in targets[1:]
        ]
        print(f"| {label}, 1 client: p50 | {' | '.join(cells)} |")
    for key, label in (("version", "/api/version"), ("jobs", "/api/jobs/"), ("job", "/api/jobs/{id}")):
        base = statistics.median(direct.rps[key])
        cells = ["1x"]
        for t in targets[1:]:
            ratios = [g / d for g, d in zip(t.rps[key], direct.rps[key], strict=True)]
            cells.append(f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
        print(f"| throughput, {clients} clients, `{label}` ({base:.0f} req/s direct) | {' | '.join(cells)} |")
    for key in ("version", "jobs", "job"):
        cells = [f"{statistics.median(t.cpu[key]):.0f}" for t in targets]
        print(f"| cpu us/req, {key} | {' | '.join(cells)} |")
    for key in ("version", "jobs", "job"):
        cells = [f"{statistics.median(t.client_cpu[key]):.0f}" for t in targets]
        print(f"| bench client cpu us/req, {key} | {' | '.join(cells)} |")
    for key in ("version", "jobs", "job"):
        cells = [f"{statistics.median(t.busy[key]) * 100:.0f}%" for t in targets]
        print(f"| machine busy, {key} | {' | '.join(cells)} |")


def stage_means(metrics_url: str) -> None:
    """The new gateway's own account of the whole run (all requests, all rounds): mean time per stage, per
    audit write, and records per group commit, from its metrics."""
    values: dict[str, float] = {}
    for line in requests.get(metrics_url, timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)

    def mean(name: str) -> float:
        return values.get(f"{name}_sum", 0.0) / max(values.get(f"{name}_count", 0.0), 1.0)

    parts = []
    for stage in ("authentication", "decision", "audit", "upstream"):
        total = values.get(f'raywarden_gateway_stage_seconds_sum{{stage="{stage}"}}', 0.0)
        count = values.get(f'raywarden_gateway_stage_seconds_count{{stage="{stage}"}}', 0.0)
        parts.append(f"{stage} {total / max(count, 1.0) * 1e6:.0f} us")
    print(f"\nnew gateway, mean per stage over the run: {', '.join(parts)}")
    print(
        f"audit: {mean('raywarden_gateway_audit_fsync_seconds') * 1e6:.0f} us per write and fsync, "
        f"{mean('raywarden_gateway_audit_batch_records'):.1f} records per group commit"
    )


# -- the cluster and the old gateway -------------------------------------------------------------------------


def start_old_gateway(
    baseline: Path, root: Path, state: StateDir, dashboard: str
) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    old_state = root / "old-state"
    env = {**os.environ, "PYTHONPATH": str(baseline / "src"), "RAYWARDEN_HOME": str(root / "old-home")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    script = (
        "import sys; from pathlib import Path;"
        "from raywarden.cluster.setup import init_state;"
        "from raywarden.state import StateDir\n"
        "try:\n from raywarden.config import ClusterConfig, Listen\n"
        "except ImportError:\n from raywarden.state import ClusterConfig, Listen\n"
        f"init_state(StateDir(Path({str(old_state)!r})), ClusterConfig(trust_domain={TD!r}, "
        f"listen=Listen(host='127.0.0.1', port={port}), metrics=False), admin_name='admin', profile_name='old')"
    )
    subprocess.run([sys.executable, "-c", script], env=env, check=True, cwd=root)
    shutil.copyfile(state.ray_token, old_state / "keys" / "ray-token")
    log = open(root / "old-gateway.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "raywarden.gateway", "--state-dir", str(old_state), "--dashboard-url", dashboard],
        env=env,
        cwd=root,
        stdout=log,
        stderr=log,
    )
    url = f"https://127.0.0.1:{port}"
    ca = old_state / "pki" / "access-ca.crt"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/api/version", verify=str(ca), timeout=2).status_code == 401:
                break
        except requests.RequestException:
            time.sleep(0.2)
    else:
        raise SystemExit(f"the old gateway did not start: see {root / 'old-gateway.log'}")
    return proc, url, root / "old-home" / "profiles" / "old"


def client_ssl(ca: Path, profile: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(profile / "client.crt"), str(profile / "client.key"))
    return ctx


def submit_job(url: str, ctx_files: tuple[str, str], ca: str) -> str:
    """The job that ``/api/jobs/{id}`` reads. Ray's job agent can answer 500 while a loaded host is still
    starting it: such an answer is shown and the submission tried again, for a minute."""
    deadline = time.monotonic() + 60
    while True:
        resp = requests.post(
            url + "/api/jobs/", json={"entrypoint": "echo bench"}, cert=ctx_files, verify=ca, timeout=60
        )
        if resp.status_code < 500 or time.monotonic() > deadline:
            break
        print(f"submission: {resp.status_code} {resp.text[:300]}; trying again", file=sys.stderr, flush=True)
        time.sleep(3)
    if resp.status_code != 200:
        raise SystemExit(f"the bench's job was refused: {resp.status_code} {resp.text[:500]}")
    return str(resp.json()["submission_id"])


# -- 10,000 jobs ------------------------------------------------------------------------------------------------

FILL = r"""
import asyncio, json, sys, time
from ray._raylet import GcsClient
from ray.dashboard.modules.job.common import JobInfo, JobInfoStorageClient, JobStatus
address, jobs = sys.argv[1], json.loads(open(sys.argv[2]).read())
client = JobInfoStorageClient(GcsClient(address=address))
now = int(time.time() * 1000)
async def fill():
    for start in range(0, len(jobs), 200):
        await asyncio.gather(*(
            client.put_info(job["id"], JobInfo(
                status=JobStatus.SUCCEEDED, entrypoint=job["entrypoint"], message="done",
                start_time=now - 60000, end_time=now, metadata=job["metadata"], runtime_env=job["runtime_env"]))
            for job in jobs[start:start + 200]))
asyncio.run(fill())
"""


def fill_jobs(state: StateDir, count: int, owners: list[str], root: Path) -> None:
    """Ray's job table gets ``count`` finished jobs, each owned by one of ``owners`` in turn and sealed as the
    gateway seals what it forwards (gateway/owner_seal.py): an unsealed owner is believed by no one."""
    run = runstate.read_run_state(state)
    if run is None:
        raise SystemExit("the cluster is not up")
    seal = OwnerSeal.for_state(state)
    jobs = []
    for i in range(count):
        job_id, owner, entrypoint = f"bench-{i:05d}", owners[i % len(owners)], f"python train.py --run {i}"
        runtime_env = {"env_vars": {"RUN": str(i)}}
        metadata = {OWNER_KEY: owner, SEAL_KEY: seal.seal(job_id, owner, entrypoint, runtime_env)}
        jobs.append({"id": job_id, "entrypoint": entrypoint, "runtime_env": runtime_env, "metadata": metadata})
    jobs_file = root / "jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
        "RAY_USE_TLS": "1",
        "RAY_TLS_SERVER_CERT": str(state.node_cert),
        "RAY_TLS_SERVER_KEY": str(state.node_key),
        "RAY_TLS_CA_CERT": str(state.internal_ca_cert),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(state.ray_token),
    }
    subprocess.run([sys.executable, "-c", FILL, f"127.0.0.1:{run.ports.gcs}", str(jobs_file)], env=env, check=True)


async def time_list(url: str, headers: dict[str, str], ctx: ssl.SSLContext | None) -> tuple[float, int]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx or False)) as session:
        started = time.perf_counter()
        async with session.get(url + "/api/jobs/", headers=headers, timeout=aiohttp.ClientTimeout(300)) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise SystemExit(f"{url}: {resp.status} {body[:200]!r}")
        return time.perf_counter() - started, len(json.loads(body))


def job_list_scale(state: StateDir, direct: Target, gateway: Target, count: int, cluster_url: str, root: Path) -> None:
    owners = [f"spiffe://{TD}/user/dev{i}" for i in range(20)]
    print(f"filling Ray's job table with {count} jobs...", file=sys.stderr, flush=True)
    fill_jobs(state, count, owners, root)
    store = IdentityStore.open(state.identity_db)
    store.add_principal(SpiffeId.parse(owners[0]), ["developers"], created_by="bench")
    from raywarden.gateway.tokens import TokenAuthority

    tokens = TokenAuthority.for_state(state, state.load_config())
    issued = tokens.issue(owners[0])
    store.record_token(issued.jti, owners[0], issued.expires_at, issued_by="bench")
    dev = {"Authorization": f"Bearer {issued.token.reveal()}"}
    times: dict[str, list[float]] = {"direct": [], "gateway": []}
    seen = {}
    for r in range(5):
        for name, url, headers, ctx in (
            ("direct", direct.url, direct.headers, None),
            ("gateway", cluster_url, dev, ssl.create_default_context(cafile=str(state.access_ca_cert))),
        )[:: 1 if r % 2 == 0 else -1]:
            elapsed, shown = asyncio.run(time_list(url, headers, ctx))
            times[name].append(elapsed)
            seen[name] = shown
    d, g = statistics.median(times["direct"]), statistics.median(times["gateway"])
    ratios = [gt / dt for gt, dt in zip(times["gateway"], times["direct"], strict=True)]
    print(
        f"\njob list of {seen['direct']} jobs: direct {d * 1000:.0f} ms (Ray's whole list), gateway {g * 1000:.0f} ms "
        f"(the developer's {seen['gateway']} jobs): {statistics.median(ratios):.2f}x "
        f"({min(ratios):.2f}-{max(ratios):.2f} over 5 runs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="an older source tree (git archive REV | tar -x -C DIR)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200, help="sequential requests per round (latency)")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per throughput window")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=0, help="also time a developer's list of this many jobs")
    parser.add_argument("--gateway-workers", type=int, default=0, help="the new gateway's workers (0: one per core)")
    parser.add_argument("--skip-table", action="store_true", help="only the job list (with --jobs)")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    root = Path(tempfile.mkdtemp(prefix="rw-bench-"))
    os.environ["RAYWARDEN_HOME"] = str(root / "home")
    state = StateDir(root / "state")
    port = free_port()
    old: subprocess.Popen[bytes] | None = None
    try:
        init_state(
            state,
            ClusterConfig(
                trust_domain=TD, listen=Listen(host="127.0.0.1", port=port), gateway_workers=args.gateway_workers
            ),
            admin_name="admin",
            profile_name="bench",
        )
        lifecycle.up(state, num_cpus=2)
        run = runstate.read_run_state(state)
        assert run is not None
        dashboard = f"http://127.0.0.1:{run.ports.dashboard}"
        profile = root / "home" / "profiles" / "bench"
        url = f"https://127.0.0.1:{port}"
        job = submit_job(url, (str(profile / "client.crt"), str(profile / "client.key")), str(state.access_ca_cert))
        token = state.ray_token.read_text().strip()
        dashboard_pid = _dashboard_pid(run.ray_pid)
        targets = [
            Target("direct", dashboard, {"Authorization": f"Bearer {token}"}, None, lambda: [dashboard_pid]),
            Target(
                "new",
                url,
                {},
                client_ssl(state.access_ca_cert, profile),
                lambda: children(run.gateway_pid),
            ),
        ]
        if args.baseline is not None:
            old, old_url, old_profile = start_old_gateway(args.baseline.resolve(), root, state, dashboard)
            old_pid = old.pid
            targets.append(
                Target(
                    "old",
                    old_url,
                    {},
                    client_ssl(root / "old-state" / "pki" / "access-ca.crt", old_profile),
                    lambda: children(old_pid),  # a supervisor and its workers, or one process
                )
            )
        workers = json.loads(workers_file(state).read_text())["workers"]
        print(f"new gateway: {len(workers)} workers; job {job}", file=sys.stderr)
        if not args.skip_table:
            asyncio.run(measure(targets, job, args.rounds, args.requests, args.seconds, args.clients))
            report(targets, args.clients)
            if run.gateway_metrics_port is not None:
                stage_means(f"http://127.0.0.1:{run.gateway_metrics_port}/metrics")
        if args.jobs:
            job_list_scale(state, targets[0], targets[1], args.jobs, url, root)
        print(f"\nload average after: {os.getloadavg()}")
    finally:
        if old is not None:
            old.terminate()
            old.wait(15)
        if state.exists():
            lifecycle.down(state)
            shutil.rmtree(state.runtime_dir, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


def _dashboard_pid(ray_pid: int) -> int:
    """Ray's dashboard process of this cluster (in the session of its `ray start`), for the CPU it spends on
    direct requests."""
    from raywarden.cluster.procs import session_of

    session = session_of(ray_pid)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and session_of(int(entry.name)) == session:
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"dashboard/dashboard.py" in cmd:
                return int(entry.name)
    return ray_pid


if __name__ == "__main__":
    main()

"""The Serve listener against Ray Serve's own loopback proxy, side by side in one run.

    python bench/serve_bench.py [--rounds 3] [--seconds 5] [--clients 16]

One cluster is started with this build (`raywarden up --serve-listen`), with the weight-free apps of
raywarden/examples/serve_apps.py deployed through the gateway. "direct" is Serve's proxy on loopback, with no
credential (only the gateway can reach it when the firewall is installed; the bench runs as the control plane's
user); "gateway" is the Serve listener with a service account's API key. Both are asked the same calls, in
alternating order, round after round, so that load on the machine falls on both alike: the figures to quote
are the ratios and the differences, not the absolute times. The targets of the issue: requests/s at 16 clients
>= 0.7x direct; added p50 latency with 1 client <= 2 ms; added time to the first byte of a streaming
generator <= 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
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

import aiohttp
import requests

from raywarden.cluster import lifecycle
from raywarden.cluster.setup import init_state
from raywarden.config import ClusterConfig, Listen
from raywarden.state import StateDir

TD = "bench.raywarden"
APPS = {"echo": ("/echo", "echo"), "stream": ("/stream", "stream")}
# Every limit far above what the bench sends: it measures the path, not the limiter's refusals.
NO_LIMITS = {
    "principal": {"rate": 1e6, "burst": 10**7, "concurrency": 10**6},
    "app": {"rate": 1e6, "burst": 10**7, "concurrency": 10**6},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str]
    ssl: ssl.SSLContext | bool
    latencies: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    ttfb: list[float] = field(default_factory=list)


async def latency(session: aiohttp.ClientSession, target: Target, n: int) -> None:
    for _ in range(n):
        started = time.perf_counter()
        async with session.get(target.url + "/echo/x", headers=target.headers, ssl=target.ssl) as resp:
            await resp.read()
            if resp.status != 200:
                raise SystemExit(f"{target.name}: {resp.status} {await resp.text()}")
        target.latencies.append((time.perf_counter() - started) * 1000)


async def throughput(target: Target, clients: int, seconds: float) -> None:
    done = 0
    stop = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        async with aiohttp.ClientSession() as session:
            while time.perf_counter() < stop:
                async with session.get(target.url + "/echo/x", headers=target.headers, ssl=target.ssl) as resp:
                    await resp.read()
                    if resp.status == 200:
                        done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    target.rates.append(done / (time.perf_counter() - started))


async def first_byte(session: aiohttp.ClientSession, target: Target, n: int) -> None:
    for _ in range(n):
        started = time.perf_counter()
        async with session.get(target.url + "/stream?n=3&delay=0.05", headers=target.headers, ssl=target.ssl) as resp:
            await resp.content.readany()
            target.ttfb.append((time.perf_counter() - started) * 1000)
            await resp.read()


async def measure(targets: list[Target], rounds: int, n: int, seconds: float, clients: int) -> None:
    async with aiohttp.ClientSession() as session:
        for target in targets:  # warm-up: connections, route tables, replicas
            await latency(session, target, 20)
            target.latencies.clear()
        for index in range(rounds):
            order = targets if index % 2 == 0 else list(reversed(targets))
            for target in order:
                await latency(session, target, n)
                await first_byte(session, target, max(5, n // 10))
                await throughput(target, clients, seconds)
            print(f"round {index + 1}/{rounds} done", file=sys.stderr)


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(direct: Target, gateway: Target, clients: int) -> None:
    rate_d, rate_g = statistics.mean(direct.rates), statistics.mean(gateway.rates)
    rows = [
        ("p50 latency, 1 client (ms)", p50(direct.latencies), p50(gateway.latencies)),
        ("p50 time to first byte, stream (ms)", p50(direct.ttfb), p50(gateway.ttfb)),
        (f"requests/s, {clients} clients", rate_d, rate_g),
    ]
    print(f"{'':40} {'direct':>10} {'gateway':>10} {'ratio':>8} {'added':>9}")
    for label, d, g in rows:
        print(f"{label:40} {d:10.2f} {g:10.2f} {g / d:8.2f} {g - d:+9.2f}")
    print()
    print(f"requests/s ratio (target >= 0.7): {rate_g / rate_d:.2f}")
    print(f"added p50 latency (target <= 2 ms): {p50(gateway.latencies) - p50(direct.latencies):.2f} ms")
    print(f"added time to first byte (target <= 5 ms): {p50(gateway.ttfb) - p50(direct.ttfb):.2f} ms")


def wait_running(state: StateDir, dashboard: str, token: str) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        apps = requests.get(
            dashboard + "/api/serve/applications/", headers={"Authorization": f"Bearer {token}"}, timeout=10
        ).json()["applications"]
        if all(apps.get(name, {}).get("status") == "RUNNING" for name in APPS):
            return
        time.sleep(1)
    raise SystemExit("the bench's Serve applications did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300, help="sequential calls per round for latency")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per round for throughput")
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="rw-serve-bench-"))
    home = root / "home"
    state = StateDir(root / "state")
    serve_port = free_port()
    os.environ["RAYWARDEN_HOME"] = str(home)
    config = ClusterConfig(trust_domain=TD, listen=Listen(host="127.0.0.1", port=free_port()), serve_limits=NO_LIMITS)
    init_state(state, config, admin_name="admin", profile_name="bench")
    try:
        print("starting the cluster with Serve...", file=sys.stderr)
        run = lifecycle.up(state, serve_listen=Listen(host="127.0.0.1", port=serve_port))
        profile = home / "profiles" / "bench"
        cert = (str(profile / "client.crt"), str(profile / "client.key"))
        gateway_url = f"https://127.0.0.1:{config.listen.port}"
        body = {
            "applications": [
                {"name": n, "route_prefix": p, "import_path": f"raywarden.examples.serve_apps:{a}"}
                for n, (p, a) in APPS.items()
            ]
        }
        resp = requests.put(
            gateway_url + "/raywarden/v1/serve/applications",
            json=body,
            cert=cert,
            verify=str(state.access_ca_cert),
            timeout=120,
        )
        resp.raise_for_status()
        token = state.ray_token.read_text().strip()
        wait_running(state, f"http://127.0.0.1:{run.ports.dashboard}", token)
        cli = [sys.executable, "-m", "raywarden.cli.main"]
        env = {**os.environ, "RAYWARDEN_STATE_DIR": str(state.root)}
        subprocess.run([*cli, "sa", "add", "bench"], env=env, check=True, capture_output=True)
        key = subprocess.run(
            [*cli, "sa", "key", "create", "bench"], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
        # The bench's account calls as an admin would: the policy decision is the same work either way.
        subprocess.run([*cli, "sa", "groups", "bench", "--add", "admins"], env=env, check=True, capture_output=True)
        tls = ssl.create_default_context(cafile=str(state.access_ca_cert))
        direct = Target("direct", f"http://127.0.0.1:{run.serve_port}", {}, False)
        gateway = Target("gateway", f"https://127.0.0.1:{serve_port}", {"Authorization": f"Bearer {key}"}, tls)
        asyncio.run(measure([direct, gateway], args.rounds, args.requests, args.seconds, args.clients))
        report(direct, gateway, args.clients)
    finally:
        lifecycle.down(state)
        shutil.rmtree(state.runtime_dir, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

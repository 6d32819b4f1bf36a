"""Whether uvloop and httptools earn their place: this build's gateway with uvloop + httptools against asyncio's
own loop + h11, in front of one Ray, the gateway restarted between variants, rounds interleaved.

    python bench/gateway_variants_bench.py [--rounds 3]

Printed per variant: p50 of 1-client latency and 16-client throughput on /api/version and /api/jobs/{id}, as
ratios to Ray's own dashboard measured in the same round, and the gateway's CPU time per request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).parent))
from gateway_bench import (
    TD,
    Target,
    _dashboard_pid,
    children,
    client_ssl,
    free_port,
    measure,
    submit_job,
)

from raywarden.cluster import lifecycle, runstate
from raywarden.cluster.procs import cmdline, terminate
from raywarden.cluster.setup import init_state
from raywarden.config import ClusterConfig, Listen
from raywarden.state import StateDir

VARIANTS = {
    "uvloop+httptools": {"RAYWARDEN_GATEWAY_LOOP": "uvloop", "RAYWARDEN_GATEWAY_HTTP": "httptools"},
    "asyncio+h11": {"RAYWARDEN_GATEWAY_LOOP": "asyncio", "RAYWARDEN_GATEWAY_HTTP": "h11"},
}


def restart_gateway(state: StateDir, argv: list[str], env: dict[str, str], url: str) -> int:
    run = runstate.read_run_state(state)
    assert run is not None
    terminate([run.gateway_pid], grace_s=15)
    proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/api/version", verify=str(state.access_ca_cert), timeout=2).status_code == 401:
                break
        except requests.RequestException:
            time.sleep(0.2)
    # `down` finds the gateway by its pid in the run file: keep it current.
    run_file = state.run_dir / "cluster.json"
    run_file.write_text(run.model_copy(update={"gateway_pid": proc.pid}).model_dump_json(indent=2))
    return proc.pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=150)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    root = Path(tempfile.mkdtemp(prefix="rw-variants-"))
    os.environ["RAYWARDEN_HOME"] = str(root / "home")
    state = StateDir(root / "state")
    port = free_port()
    results: dict[str, dict[str, list[float]]] = {name: {} for name in VARIANTS}
    try:
        init_state(
            state,
            ClusterConfig(trust_domain=TD, listen=Listen(host="127.0.0.1", port=port)),
            admin_name="admin",
            profile_name="bench",
        )
        lifecycle.up(state, num_cpus=2)
        run = runstate.read_run_state(state)
        assert run is not None
        argv = cmdline(run.gateway_pid).split()
        url = f"https://127.0.0.1:{port}"
        profile = root / "home" / "profiles" / "bench"
        job = submit_job(url, (str(profile / "client.crt"), str(profile / "client.key")), str(state.access_ca_cert))
        token = state.ray_token.read_text().strip()
        dashboard_pid = _dashboard_pid(run.ray_pid)
        dashboard = f"http://127.0.0.1:{run.ports.dashboard}"
        for r in range(args.rounds):
            names = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
            for name in names:
                pid = restart_gateway(state, argv, VARIANTS[name], url)
                direct = Target(
                    "direct", dashboard, {"Authorization": f"Bearer {token}"}, None, lambda: [dashboard_pid]
                )
                gateway = Target(name, url, {}, client_ssl(state.access_ca_cert, profile), lambda p=pid: children(p))
                asyncio.run(measure([direct, gateway], job, 1, args.requests, args.seconds, 16))
                for key in ("version", "job"):
                    results[name].setdefault(f"{key} added ms", []).append(
                        (statistics.median(gateway.lat[key]) - statistics.median(direct.lat[key])) * 1000
                    )
                    results[name].setdefault(f"{key} throughput ratio", []).append(
                        gateway.rps[key][0] / direct.rps[key][0]
                    )
                    results[name].setdefault(f"{key} cpu us/req", []).append(gateway.cpu[key][0])
        keys = list(next(iter(results.values())))
        print(f"\n| variant | {' | '.join(keys)} |")
        print("|---" * (len(keys) + 1) + "|")
        for name, found in results.items():
            cells = [f"{statistics.median(found[k]):.2f} ({min(found[k]):.2f}-{max(found[k]):.2f})" for k in keys]
            print(f"| {name} | {' | '.join(cells)} |")
        print(f"\nload average after: {os.getloadavg()}")
    finally:
        if state.exists():
            lifecycle.down(state)
            shutil.rmtree(state.runtime_dir, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

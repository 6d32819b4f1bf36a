"""`raywarden up` against plain `ray start --head`, on this machine, in the same run.

Each trial measures wall time until the cluster accepts a job: for stock Ray, until `GET /api/jobs/`
answers 200 on its dashboard; for raywarden, until `raywarden up` returns (it waits for Ray's Jobs API
and for the gateway to answer). Trials alternate so that machine noise hits both sides alike.
Prints the median of each and their ratio; --json for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stock_ray_start() -> float:
    """Plain `ray start --head` with default settings (loopback dashboard so the bench exposes nothing)."""
    temp = tempfile.mkdtemp(prefix="rwb-", dir="/tmp")
    port, dash, client = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            ray,
            "start",
            "--head",
            "--block",
            f"--temp-dir={temp}",
            f"--port={port}",
            f"--dashboard-port={dash}",
            f"--ray-client-server-port={client}",
            "--dashboard-host=127.0.0.1",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError("ray start exited")
            try:
                if requests.get(f"http://127.0.0.1:{dash}/api/jobs/", timeout=1).status_code == 200:
                    return time.monotonic() - started
            except requests.RequestException:
                pass
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        _sweep(temp)
        shutil.rmtree(temp, ignore_errors=True)


def raywarden_up() -> tuple[float, float]:
    """Returns (init seconds, up seconds) for a fresh state dir."""
    root = Path(tempfile.mkdtemp(prefix="rwb-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYWARDEN_"))}
    env["RAYWARDEN_HOME"] = str(root / "home")
    env["RAYWARDEN_STATE_DIR"] = str(root / "state")
    cli = [sys.executable, "-m", "raywarden.cli.main"]
    try:
        t0 = time.monotonic()
        subprocess.run([*cli, "init", "--listen", f"127.0.0.1:{free_port()}"], env=env, check=True, capture_output=True)
        t1 = time.monotonic()
        subprocess.run([*cli, "up"], env=env, check=True, capture_output=True)
        t2 = time.monotonic()
        return t1 - t0, t2 - t1
    finally:
        subprocess.run([*cli, "down"], env=env, check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _sweep(marker: str) -> None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    stock, up, init = [], [], []
    for i in range(args.runs):
        stock.append(stock_ray_start())
        i_s, u_s = raywarden_up()
        init.append(i_s)
        up.append(u_s)
        if not args.json:
            print(
                f"run {i + 1}/{args.runs}: ray start {stock[-1]:.2f}s  raywarden up {up[-1]:.2f}s  "
                f"(init {init[-1]:.2f}s)",
                file=sys.stderr,
            )
    result = {
        "runs": args.runs,
        "ray_start_median_s": round(statistics.median(stock), 3),
        "raywarden_up_median_s": round(statistics.median(up), 3),
        "raywarden_init_median_s": round(statistics.median(init), 3),
        "up_over_ray_start": round(statistics.median(up) / statistics.median(stock), 3),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{'':28}{'median':>10}")
    print(f"{'ray start --head':28}{result['ray_start_median_s']:>9.2f}s")
    print(f"{'raywarden up':28}{result['raywarden_up_median_s']:>9.2f}s")
    print(f"{'raywarden init (once)':28}{result['raywarden_init_median_s']:>9.2f}s")
    print(f"ratio up / ray start: {result['up_over_ray_start']:.2f}x  ({args.runs} runs each, alternating)")


if __name__ == "__main__":
    main()

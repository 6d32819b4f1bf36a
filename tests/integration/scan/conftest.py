"""A stock Ray head (default security settings) on loopback, owned by this test module alone."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

STARTUP_TIMEOUT = 120.0


@dataclass(frozen=True)
class RayHead:
    temp_dir: str
    gcs_port: int
    dashboard_port: int
    client_port: int
    agent_port: int
    metrics_port: int

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def ports(self) -> list[int]:
        return [self.gcs_port, self.dashboard_port, self.client_port, self.agent_port, self.metrics_port]


def _free_ports(count: int) -> list[int]:
    # Hold every socket open until all are chosen so the kernel cannot hand out one port twice.
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if text.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
    return pids


def _stop(proc: subprocess.Popen[bytes], temp_dir: str) -> None:
    # Never `ray stop`: it kills every Ray on the host, including other tests' clusters.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while (leftovers := [p for p in _pids_mentioning(temp_dir) if p != os.getpid()]) and time.monotonic() < deadline:
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        time.sleep(1)
    for pid in _pids_mentioning(temp_dir):
        if pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    ray = shutil.which("ray")
    if ray is None:
        pytest.skip("the ray CLI is not installed")
    # Short path: Ray puts unix sockets under it, and those are limited to 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="rwscan", dir="/tmp")
    gcs, dash, client, agent, metrics = _free_ports(5)
    head = RayHead(temp_dir, gcs, dash, client, agent, metrics)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_USE_TLS", "RAY_TLS", "RAY_ADDRESS"))
    }
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    cmd = [
        ray,
        "start",
        "--head",
        "--block",
        "--temp-dir",
        temp_dir,
        "--port",
        str(gcs),
        "--dashboard-port",
        str(dash),
        "--ray-client-server-port",
        str(client),
        "--dashboard-agent-listen-port",
        str(agent),
        "--metrics-export-port",
        str(metrics),
        "--dashboard-host",
        "127.0.0.1",
        "--node-ip-address",
        "127.0.0.1",
        "--include-dashboard=true",
        "--disable-usage-stats",
        "--num-cpus",
        "1",
    ]
    log_path = Path(temp_dir) / "ray-start.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                if _get(f"{head.dashboard}/api/version")[0] == 200 and all(_port_open(p) for p in head.ports):
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"Ray did not come up in {STARTUP_TIMEOUT:g}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield head
    finally:
        _stop(proc, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)

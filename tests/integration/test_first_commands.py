"""The first commands an operator types, on a cluster of their own: the `Next:` lines of `init` and `up` run
as printed (even with a space in the state dir), and `down` names running jobs before it kills them."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from raywarden.cluster import lifecycle, report
from raywarden.state import StateDir
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYWARDEN_"))}
    env["RAYWARDEN_HOME"] = str(home)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _next_command(output: str) -> str:
    lines = output.splitlines()
    return lines[lines.index("Next:") + 1].strip()


@pytest.fixture
def place(tmp_path: Path) -> Iterator[tuple[Path, StateDir]]:
    state = StateDir(tmp_path / "my cluster" / "state")
    try:
        yield tmp_path / "home", state
    finally:
        if state.exists():
            lifecycle.down(state)


def test_next_hints_run_and_down_asks_before_killing_jobs(place: tuple[Path, StateDir]) -> None:
    home, state = place
    env = _env(home)

    def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "raywarden.cli.main", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    port = free_port()
    init = run("init", "--state-dir", str(state.root), "--listen", f"127.0.0.1:{port}", "--trust-domain", "first.test")
    assert init.returncode == 0, init.stderr
    up_line = _next_command(init.stdout)
    assert shlex.split(up_line) == ["raywarden", "up", "--state-dir", str(state.root)]

    up = subprocess.run(["/bin/sh", "-c", up_line], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert up.returncode == 0, up.stdout + up.stderr
    job_line = _next_command(up.stdout)
    first = subprocess.run(
        ["/bin/sh", "-c", job_line], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert first.returncode == 0, first.stderr
    assert "'CPU'" in first.stdout

    job = json.loads(run("job", "submit", "--no-wait", "--json", "--", "sleep", "600").stdout)["submission_id"]

    # No terminal, no --force: refused, the job named, nothing stopped.
    refused = run("down", "--state-dir", str(state.root))
    assert refused.returncode == 1
    assert job in refused.stderr and "spiffe://first.test/user/admin" in refused.stderr
    assert "--force" in refused.stderr and f"raywarden job stop {job}" in refused.stderr
    assert report.status(state)["ray"]["running"]

    stopped = run("down", "--state-dir", str(state.root), "--force", "--json")
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout)["stopped"] is True
    assert not report.status(state)["ray"]["running"]

    # Nothing running any more: `down` needs no --force.
    again = run("down", "--state-dir", str(state.root))
    assert again.returncode == 0 and "was not running" in again.stdout

"""A developer's job tries to read the control plane's files and /proc entries and to write into its state.

The job is submitted through the gateway with a developer's certificate, like any job, with the probe
(probe_job.py) as its working_dir. It prints one line per attempt; every attempt on the control plane's
state must be refused, and the job must run as the cluster's Ray user, not as the control plane's.
"""

from __future__ import annotations

import io
import json
import os
import pwd
import secrets
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import requests

from raywarden.cluster.runstate import read_run_state
from tests.support import Cluster

pytestmark = pytest.mark.integration

PROBE = Path(__file__).with_name("probe_job.py")
# World-readable on Linux whoever owns the process; their content is checked for secrets instead.
PUBLIC_PROC_ENTRIES = ("cmdline", "status")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def targets(cluster: Cluster) -> dict[str, Any]:
    """Every file and folder of the control plane: the state dir and the admin's client profile."""
    files: list[str] = []
    folders: list[str] = []
    for top in (cluster.state.root, cluster.home):
        folders.append(str(top))
        for folder, dirs, names in os.walk(top):
            folders += [str(Path(folder) / d) for d in dirs]
            files += [str(Path(folder) / n) for n in names]
    run = read_run_state(cluster.state)
    assert run is not None
    return {
        "list": sorted(folders),
        "read": sorted(files),
        "create_in": sorted(folders),
        "append": sorted(files),
        "proc": _descendants(run.gateway_pid),
    }


def _package(asked: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("probe_job.py", PROBE.read_text())
        archive.writestr("targets.json", json.dumps(asked))
    return buffer.getvalue()


def run_probe(cluster: Cluster, asked: dict[str, Any]) -> list[str]:
    """Submit the probe as a developer through the gateway; return its PROBE lines."""
    tag = secrets.token_hex(3)
    developer = cluster.issue(f"probe-dev-{tag}", groups=("developers",))
    name = f"_ray_pkg_{secrets.token_hex(8)}.zip"
    stored = requests.put(
        f"{cluster.url}/api/packages/gcs/{name}", data=_package(asked), cert=developer, verify=cluster.ca, timeout=60
    )
    assert stored.status_code == 200, stored.text
    sid = f"probe-{tag}"
    body = {"entrypoint": "python probe_job.py", "submission_id": sid, "runtime_env": {"working_dir": f"gcs://{name}"}}
    submitted = requests.post(f"{cluster.url}/api/jobs/", json=body, cert=developer, verify=cluster.ca, timeout=60)
    assert submitted.status_code == 200, submitted.text
    deadline = time.monotonic() + 180
    status = None
    while time.monotonic() < deadline and status not in ("SUCCEEDED", "FAILED", "STOPPED"):
        time.sleep(1)
        status = next(j["status"] for j in cluster.ray_jobs() if j.get("submission_id") == sid)
    logs = requests.get(f"{cluster.url}/api/jobs/{sid}/logs", cert=developer, verify=cluster.ca, timeout=30)
    assert status == "SUCCEEDED", logs.text
    lines = [line for line in logs.json()["logs"].splitlines() if line.startswith("PROBE ")]
    print("\n".join(lines))  # the report shows this output verbatim (pytest -s)
    return lines


def _secrets(cluster: Cluster) -> list[str]:
    """Material that must never reach a job: the body of every private key in the state dir."""
    found = []
    for path in cluster.state.root.rglob("*.key"):
        body = [line for line in path.read_text().splitlines() if line and not line.startswith("-----")]
        found.append("".join(body)[:48])
    return found


def test_a_developers_job_cannot_touch_the_control_plane(cluster: Cluster) -> None:
    asked = targets(cluster)
    lines = run_probe(cluster, asked)
    config = cluster.state.load_config()
    assert config.ray_user, "tests run as root: Ray must run as its own user"
    ray_user = pwd.getpwnam(config.ray_user)
    assert lines[0].startswith(f"PROBE uid={ray_user.pw_uid} euid={ray_user.pw_uid} gid={ray_user.pw_gid} ")
    assert ray_user.pw_uid != os.geteuid()
    attempts = [line for line in lines[1:] if not line.startswith("PROBE env ")]
    expected = sum(len(asked[k]) for k in ("list", "read", "create_in", "append")) + 6 * len(asked["proc"])
    assert len(attempts) == expected > 40, attempts
    allowed = []
    for line in attempts:
        entry = line.split(":", 1)[0].rsplit("/", 1)[-1]
        if line.startswith("PROBE read   /proc/") and entry in PUBLIC_PROC_ENTRIES:
            continue
        if ": DENIED (" not in line:
            allowed.append(line)
    assert not allowed, "\n".join(allowed)
    # Nothing secret in what a job can see: its own environment, and the command lines it may read.
    environment = "\n".join(line for line in lines if line.startswith("PROBE env "))
    assert "RAY_AUTH_TOKEN_PATH=" in environment
    visible = environment + "".join(Path(f"/proc/{pid}/cmdline").read_text(errors="replace") for pid in asked["proc"])
    for secret in [*_secrets(cluster), cluster.ray_token()]:
        assert secret not in visible

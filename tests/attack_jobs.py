"""Helpers for the replays of attacks by a developer whose jobs run as Ray's user: submit a job through the
gateway with a developer's certificate and read what it printed."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import requests

from tests.support import Cluster


def developer(cluster: Cluster, name: str = "bob") -> tuple[str, str]:
    return cluster.issue(f"{name}-{secrets.token_hex(3)}", groups=("developers",))


def submit(
    cluster: Cluster, cert: tuple[str, str], script: str, *args: str, runtime_env: dict[str, Any] | None = None
) -> str:
    sid = f"attack-{secrets.token_hex(4)}"
    body: dict[str, Any] = {
        "entrypoint": " ".join(["python", "-c", _quote(script), *map(_quote, args)]),
        "submission_id": sid,
    }
    if runtime_env:
        body["runtime_env"] = runtime_env
    for _ in range(30):
        resp = requests.post(f"{cluster.url}/api/jobs/", json=body, cert=cert, verify=cluster.ca, timeout=60)
        # Right after `up` on a loaded host Ray's head may not have its job agent yet (Ray answers 500/503).
        if "No available agent" not in resp.text:
            break
        time.sleep(2)
    assert resp.status_code == 200, resp.text
    return sid


def finish(cluster: Cluster, cert: tuple[str, str], sid: str, timeout: float = 300) -> tuple[str, str]:
    """Wait for the job to end; its status and its logs."""
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline and status not in ("SUCCEEDED", "FAILED", "STOPPED"):
        time.sleep(1)
        status = next((j["status"] for j in cluster.ray_jobs() if j.get("submission_id") == sid), "")
    logs = requests.get(f"{cluster.url}/api/jobs/{sid}/logs", cert=cert, verify=cluster.ca, timeout=30)
    assert logs.status_code == 200, logs.text
    return status, str(logs.json()["logs"])


def run(cluster: Cluster, cert: tuple[str, str], script: str, *args: str, **kw: Any) -> dict[str, Any]:
    """Run ``script`` as a job; it prints one line ``RESULT <json>``."""
    status, logs = finish(cluster, cert, submit(cluster, cert, script, *args, **kw))
    assert status == "SUCCEEDED", logs[-3000:]
    line = next(x for x in logs.splitlines() if x.startswith("RESULT "))
    found: dict[str, Any] = json.loads(line[len("RESULT ") :])
    return found


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)

"""One real cluster with Ray Serve behind the gateway's Serve listener, shared by the Serve tests.

Serve can only be pinned when it first starts (`up --serve-listen`), so these tests cannot use the session
`cluster` (started without Serve); one cluster serves every test here. Its applications are the weight-free
ones in raywarden/examples/serve_apps.py, deployed through the gateway by the admin, and two service
accounts: `chatbot` (group app-users, which may call every one of them) and `outsider`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from raywarden.state import StateDir
from tests.conftest import free_port
from tests.support import Cluster, run_cli, start_cluster, stop_cluster

EXAMPLES = "raywarden.examples.serve_apps"
APPS = {
    "echo": ("/echo", "echo"),
    "stream": ("/stream", "stream"),
    "sockets": ("/sockets", "ws"),
    "limited": ("/limited", "echo"),
    "gate": ("/gate", "gate"),
}
# "limited" keeps each caller to a burst of LIMITED_BURST calls, refilled slowly: enough to see where the
# limit falls whichever worker takes each call.
LIMITED_BURST = 12
# "gate" lets each caller hold GATE_CONCURRENCY calls at once (no rate limit).
GATE_CONCURRENCY = 3
READY_TIMEOUT_S = 300.0


@dataclass
class ServeCluster:
    cluster: Cluster
    url: str  # the Serve listener
    keys: dict[str, str]  # service account -> an API key, unscoped

    def call(
        self, method: str, path: str, key: str | None = None, *, fresh: bool = True, **kwargs: Any
    ) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        if fresh:
            headers.setdefault("Connection", "close")  # a new connection: any worker may take it
        return requests.request(method, self.url + path, headers=headers, verify=self.cluster.ca, timeout=60, **kwargs)

    def new_key(self, name: str, *extra: str) -> str:
        return run_cli(self.cluster, "sa", "key", "create", name, *extra, check=True).stdout.strip()


def _deploy(cluster: Cluster) -> None:
    body = {
        "applications": [
            {"name": name, "route_prefix": prefix, "import_path": f"{EXAMPLES}:{attr}"}
            for name, (prefix, attr) in APPS.items()
        ],
        "raywarden": {"apps": {name: {"invoke_groups": ["app-users"]} for name in APPS}},
    }
    resp = requests.put(
        cluster.url + "/raywarden/v1/serve/applications",
        json=body,
        cert=cluster.admin_cert,
        verify=cluster.ca,
        timeout=120,
    )
    assert resp.status_code == 200, resp.text


def _wait_running(cluster: Cluster) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            resp = requests.get(
                cluster.dashboard_url() + "/api/serve/applications/",
                headers={"Authorization": f"Bearer {cluster.ray_token()}"},
                timeout=30,
            )
        except requests.RequestException:  # a busy machine: Ray's dashboard may answer late
            time.sleep(1)
            continue
        status = {n: a.get("status") for n, a in resp.json().get("applications", {}).items()}
        if all(status.get(name) == "RUNNING" for name in APPS):
            return
        if any(s == "DEPLOY_FAILED" for s in status.values()):
            break
        time.sleep(1)
    raise AssertionError(f"Serve applications did not start: {status}")


@pytest.fixture(scope="session")
def serve_cluster() -> Iterator[ServeCluster]:
    root = Path(tempfile.mkdtemp(prefix="rwt-serve-"))
    serve_port = free_port()
    limits = {
        "apps": {
            "limited": {"principal": {"rate": 0.01, "burst": LIMITED_BURST, "concurrency": 64}},
            "gate": {"principal": {"rate": 0, "burst": 0, "concurrency": GATE_CONCURRENCY}},
        }
    }
    try:
        cluster = start_cluster(root, port=free_port(), serve_port=serve_port, serve_limits=limits)
        _deploy(cluster)
        _wait_running(cluster)
        keys = {}
        for name, group in (("chatbot", ["--group", "app-users", "--create-group"]), ("outsider", [])):
            run_cli(cluster, "sa", "add", name, *group, check=True)
            keys[name] = run_cli(cluster, "sa", "key", "create", name, check=True).stdout.strip()
        served = ServeCluster(cluster, f"https://127.0.0.1:{serve_port}", keys)
        _wait_routed(served)
        yield served
    except Exception:
        # Keep the cluster's logs of a failed start-up for a look after the run.
        kept = Path(tempfile.gettempdir()) / f"{root.name}-logs"
        shutil.copytree(root / "state" / "logs", kept, dirs_exist_ok=True)
        for ray_logs in (StateDir(root / "state").runtime_dir / "ray").glob("session_*/logs"):
            shutil.copytree(ray_logs, kept / "ray", dirs_exist_ok=True, ignore_dangling_symlinks=True)
        raise
    finally:
        stop_cluster(root)
        shutil.rmtree(root, ignore_errors=True)


def _wait_routed(served: ServeCluster) -> None:
    """Each gateway worker polls Serve's routes on its own: wait until a call reaches every application."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        codes = {served.call("GET", "/echo/ready", served.keys["chatbot"]).status_code for _ in range(4)}
        if codes == {200}:
            return
        time.sleep(0.5)
    raise AssertionError("the Serve listener does not route to echo")

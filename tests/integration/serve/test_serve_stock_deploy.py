"""Stock `serve deploy` through the gateway, run as docs/serve.md gives it: `REQUESTS_CA_BUNDLE=access-ca.crt
RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(raywarden token) serve deploy -a https://GATEWAY config.yaml`.

Ray's PUT replaces the whole set of applications, so on a shared cluster a developer sends the set `serve
config` shows plus their own: the others are unchanged (no decision), theirs is created and owned by them. A
set that leaves out someone else's application would delete it, and is refused whole. The deploys here keep
the shared cluster's applications as they are; the end restores them should a check fail half-way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from raywarden.identity.serveapps import ServeAppOwners
from raywarden.identity.store import IdentityStore
from tests.integration.serve.conftest import APPS, EXAMPLES, ServeCluster, _deploy, _wait_routed, _wait_running
from tests.support import Cluster, run_cli

pytestmark = pytest.mark.integration

SERVE = str(Path(sys.executable).parent / "serve")
APP = "stockapp"
# Serve applies a config after answering the PUT (`serve deploy` says so): the new state shows within this.
APPLIED_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Person:
    """A developer who logged in with `raywarden login` on their own machine (a home of their own)."""

    cluster: Cluster
    home: Path
    profile: str

    @property
    def profile_dir(self) -> Path:
        return self.home / "profiles" / self.profile

    @property
    def cert(self) -> tuple[str, str]:
        return (str(self.profile_dir / "client.crt"), str(self.profile_dir / "client.key"))

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYWARDEN_"))}
        env["RAYWARDEN_HOME"] = str(self.home)
        env["RAYWARDEN_STATE_DIR"] = str(self.home / "no-cluster-here")
        return env

    def raywarden(self, *args: str) -> str:
        command = [sys.executable, "-m", "raywarden.cli.main", *args]
        done = subprocess.run(command, env=self.env(), capture_output=True, text=True, timeout=120, check=True)
        return done.stdout.strip()

    def serve(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Ray's own `serve` CLI, as the doc gives it: the access CA, a raywarden token, the gateway's address."""
        env = self.env()
        env["REQUESTS_CA_BUNDLE"] = str(self.profile_dir / "access-ca.crt")
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN"] = self.raywarden("token")
        return subprocess.run(
            [SERVE, command, "-a", self.cluster.url, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def deploy(self, config: Path) -> subprocess.CompletedProcess[str]:
        return self.serve("deploy", str(config))


def _login(cluster: Cluster, name: str, home: Path) -> Person:
    added = json.loads(run_cli(cluster, "user", "add", name, "--group", "developers", "--json", check=True).stdout)
    person = Person(cluster, home, name)
    person.raywarden(
        "login", cluster.url, "--code", added["code"], "--ca-fingerprint", added["ca_fingerprint"], "--profile", name
    )
    return person


@pytest.fixture
def shared_apps_restored(serve_cluster: ServeCluster) -> Iterator[None]:
    """Whatever happens in the test, the shared cluster ends with its applications, as conftest deployed them."""
    yield
    cluster = serve_cluster.cluster
    if APP in _serve_status(cluster):
        gone = requests.delete(
            f"{cluster.url}/raywarden/v1/serve/applications/{APP}",
            cert=cluster.admin_cert,
            verify=cluster.ca,
            timeout=120,
        )
        assert gone.status_code == 200, gone.text
    if any(_serve_status(cluster).get(name) != "RUNNING" for name in APPS):
        _deploy(cluster)
        _wait_running(cluster)
        _wait_routed(serve_cluster)


def _serve_status(cluster: Cluster) -> dict[str, str]:
    """Each application's status, from Ray itself (not through the gateway)."""
    resp = requests.get(
        cluster.dashboard_url() + "/api/serve/applications/",
        headers={"Authorization": f"Bearer {cluster.ray_token()}"},
        timeout=60,
    )
    resp.raise_for_status()
    return {str(n): str(a.get("status")) for n, a in resp.json().get("applications", {}).items()}


def _wait_status(cluster: Cluster, wanted: dict[str, str | None]) -> dict[str, str]:
    """Until each named application has the wanted status (None: gone), as Serve applies a deploy later."""
    deadline = time.monotonic() + APPLIED_TIMEOUT_S
    while True:
        status = _serve_status(cluster)
        if all(status.get(name) == want for name, want in wanted.items()):
            return status
        assert time.monotonic() < deadline, f"Serve did not apply the deploy: {status}, wanted {wanted}"
        time.sleep(1)


def _config(path: Path, applications: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"applications": applications}, sort_keys=False))
    return path


def _refused(cluster: Cluster, done: subprocess.CompletedProcess[str], words: str) -> dict[str, Any]:
    """Ray's CLI failed with the gateway's 403, whose request id names a deny in the audit log."""
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "forbidden" in output and words in output, output
    said = json.loads(output[output.index('{"error"') :].splitlines()[0])
    [decision] = [
        r for r in cluster.audit_records() if r.get("request_id") == said["request_id"] and r["kind"] == "request"
    ]
    assert decision["decision"] == "deny" and decision["status"] == 403, decision
    return decision


def test_stock_serve_deploy_through_the_gateway_keeps_the_shared_apps_and_records_the_owner(
    serve_cluster: ServeCluster, shared_apps_restored: None, tmp_path: Path
) -> None:
    cluster = serve_cluster.cluster
    owner = _login(cluster, "stock-owner", tmp_path / "owner-home")
    other = _login(cluster, "stock-other", tmp_path / "other-home")
    before = _serve_status(cluster)
    assert all(before.get(name) == "RUNNING" for name in APPS), before

    # What Serve runs, as stock `serve config` shows it through the gateway, and the owner's application.
    shown = owner.serve("config")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    running = [app for app in yaml.safe_load_all(shown.stdout) if app]
    assert sorted(app["name"] for app in running) == sorted(APPS)
    mine = {"name": APP, "route_prefix": f"/{APP}", "import_path": f"{EXAMPLES}:echo"}

    # Only their own application: Ray would delete every other one, so the whole deploy is refused.
    alone = owner.deploy(_config(tmp_path / "alone.yaml", [mine]))
    decision = _refused(cluster, alone, "serve.delete on 'echo'")
    assert decision["principal"].endswith("/user/stock-owner")
    assert {a["name"]: a["change"] for a in decision["apps"]} == {**dict.fromkeys(APPS, "delete"), APP: "create"}

    # The set as it runs, plus theirs: the deploy lands, the others unchanged.
    full = _config(tmp_path / "full.yaml", [*running, mine])
    deployed = owner.deploy(full)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    _wait_status(cluster, {APP: "RUNNING", **dict.fromkeys(APPS, "RUNNING")})

    # The audit log names the deployer and what the deploy changed; the application is theirs.
    [record] = [
        r
        for r in cluster.audit_records()
        if r.get("kind") == "request"
        and r.get("method") == "PUT"
        and r.get("path") == "/api/serve/applications/"
        and r.get("decision") == "allow"
        and str(r.get("principal", "")).endswith("/user/stock-owner")
    ]
    assert record["action"] == "serve.deploy" and record["auth_method"] == "token"
    changes = {a["name"]: (a["change"], a["owner"]) for a in record["apps"]}
    assert changes[APP] == ("create", record["principal"])
    assert all(changes[name][0] == "unchanged" for name in APPS), changes
    owned = ServeAppOwners(IdentityStore.open(cluster.state.identity_db)).get(APP)
    assert owned is not None and owned.owner == record["principal"] and owned.deployed_by == record["principal"]

    # Its owner may call it on the Serve listener; another developer may not.
    deadline = time.monotonic() + APPLIED_TIMEOUT_S
    while (called := _call(serve_cluster, owner.cert)).status_code != 200:
        assert time.monotonic() < deadline, f"{APP} is not routed: {called.status_code} {called.text}"
        time.sleep(1)
    assert _call(serve_cluster, other.cert).status_code == 403

    # Another developer may neither change it, nor delete it by leaving it out, nor shut Serve down.
    moved = [*running, {**mine, "route_prefix": "/moved"}]
    _refused(cluster, other.deploy(_config(tmp_path / "moved.yaml", moved)), f"forbidden: serve.deploy on '{APP}'")
    _refused(cluster, other.deploy(_config(tmp_path / "left-out.yaml", running)), f"serve.delete on '{APP}'")
    _refused(cluster, other.serve("shutdown", "-y"), f"serve.delete on '{APP}'")
    after = _serve_status(cluster)
    assert all(after.get(name) == "RUNNING" for name in [APP, *APPS]), after

    # Its owner deletes it the stock way (a set without it); everything else stays as it was.
    removed = owner.deploy(_config(tmp_path / "without.yaml", running))
    assert removed.returncode == 0, removed.stdout + removed.stderr
    _wait_status(cluster, {APP: None, **dict.fromkeys(APPS, "RUNNING")})
    assert ServeAppOwners(IdentityStore.open(cluster.state.identity_db)).get(APP) is None
    assert serve_cluster.call("GET", "/echo/", serve_cluster.keys["chatbot"]).status_code == 200


def _call(served: ServeCluster, cert: tuple[str, str]) -> requests.Response:
    return requests.get(f"{served.url}/{APP}/", cert=cert, verify=served.cluster.ca, timeout=60)

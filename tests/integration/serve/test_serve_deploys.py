"""Deploying Serve applications through the gateway: the deployer is the recorded owner, and only owners and
admins may change or delete an application; `raywarden serve` drives the same routes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from tests.integration.serve.conftest import EXAMPLES, ServeCluster
from tests.integration.serve.test_serve_calls import _decision_and_outcome
from tests.support import run_cli

pytestmark = pytest.mark.integration
OWN = "/raywarden/v1/serve/applications"


def _api(served: ServeCluster, method: str, path: str, cert: tuple[str, str], **kwargs: object) -> requests.Response:
    cluster = served.cluster
    return requests.request(method, cluster.url + path, cert=cert, verify=cluster.ca, timeout=120, **kwargs)  # type: ignore[arg-type]


def _serve_call(served: ServeCluster, path: str, cert: tuple[str, str]) -> requests.Response:
    return requests.get(served.url + path, cert=cert, verify=served.cluster.ca, timeout=60)


def test_the_deployer_owns_the_app_and_another_developer_may_not_touch_it(serve_cluster: ServeCluster) -> None:
    cluster = serve_cluster.cluster
    dev1 = cluster.issue("dev-one", groups=("developers",))
    dev2 = cluster.issue("dev-two", groups=("developers",))
    body = {"applications": [{"name": "devapp", "route_prefix": "/devapp", "import_path": f"{EXAMPLES}:echo"}]}
    made = _api(serve_cluster, "PUT", OWN, dev1, json=body)
    assert made.status_code == 200, made.text
    [app] = made.json()["applications"]
    assert app["name"] == "devapp" and app["change"] == "create" and app["owner"].endswith("/user/dev-one")

    # Another developer may neither replace nor delete it, nor take its paths with a nested prefix.
    moved = {"applications": [{**body["applications"][0], "route_prefix": "/elsewhere"}]}
    assert _api(serve_cluster, "PUT", OWN, dev2, json=moved).status_code == 403
    assert _api(serve_cluster, "DELETE", OWN + "/devapp", dev2).status_code == 403
    nested = {"applications": [{"name": "thief", "route_prefix": "/devapp/v1", "import_path": f"{EXAMPLES}:echo"}]}
    refused = _api(serve_cluster, "PUT", OWN, dev2, json=nested)
    assert refused.status_code == 403, refused.text
    # Serve's listener settings and controller options are not the deployer's to choose.
    bad = {**body, "http_options": {"host": "0.0.0.0", "port": 9999}}  # noqa: S104
    answer = _api(serve_cluster, "PUT", OWN, dev1, json=bad)
    assert answer.status_code == 400 and "hint" in answer.json()

    # The owner may call it once it runs; the other developer may not.
    deadline = time.monotonic() + 180
    while _serve_call(serve_cluster, "/devapp/x", dev1).status_code != 200:
        assert time.monotonic() < deadline, "devapp did not start"
        time.sleep(1)
    denied = _serve_call(serve_cluster, "/devapp/x", dev2)
    assert denied.status_code == 403
    _decision_and_outcome(serve_cluster, denied.headers["x-request-id"])

    gone = _api(serve_cluster, "DELETE", OWN + "/devapp", dev1)
    assert gone.status_code == 200, gone.text
    records = [r for r in cluster.audit_records() if r.get("kind") == "request" and r.get("path", "").startswith(OWN)]
    assert any(r["decision"] == "allow" and r["principal"].endswith("/user/dev-one") for r in records)


def test_raywarden_serve_deploy_list_groups_and_delete(serve_cluster: ServeCluster, tmp_path: Path) -> None:
    cluster = serve_cluster.cluster
    config = tmp_path / "serve.yaml"
    config.write_text(f"applications:\n  - name: cliapp\n    route_prefix: /cliapp\n    import_path: {EXAMPLES}:echo\n")
    deployed = json.loads(
        run_cli(cluster, "serve", "deploy", str(config), "--group", "app-users", "--json", check=True).stdout
    )
    assert deployed["applications"][0]["name"] == "cliapp"
    # Serve applies a deploy after answering it (as stock `serve deploy` says): the list shows it once applied.
    deadline = time.monotonic() + 180
    while True:
        listed = json.loads(run_cli(cluster, "serve", "list", "--json", check=True).stdout)
        if any(a["name"] == "cliapp" and a["route_prefix"] == "/cliapp" for a in listed):
            break
        assert time.monotonic() < deadline, f"cliapp is not listed: {listed}"
        time.sleep(1)
    # app-users may call it (the chatbot's key), once it runs.
    deadline = time.monotonic() + 180
    while serve_cluster.call("GET", "/cliapp/", serve_cluster.keys["chatbot"]).status_code != 200:
        assert time.monotonic() < deadline, "cliapp did not start"
        time.sleep(1)
    run_cli(cluster, "serve", "groups", "cliapp", check=True)  # no group: owner and admins only
    deadline = time.monotonic() + 10
    while serve_cluster.call("GET", "/cliapp/", serve_cluster.keys["chatbot"]).status_code != 403:
        assert time.monotonic() < deadline, "the group change did not reach the Serve listener"
        time.sleep(0.5)
    run_cli(cluster, "serve", "delete", "cliapp", check=True)
    bad = run_cli(cluster, "serve", "deploy", str(tmp_path / "missing.yaml"))
    assert bad.returncode != 0 and "cannot read" in bad.stderr and "Traceback" not in bad.stderr

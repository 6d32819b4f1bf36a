"""Least privilege at the gateway, against real Ray: ownership, 404 for jobs one may not view, env value
redaction, runtime_env escapes refused, and policy reload (a broken set refused, the old one kept)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import time
import uuid
from typing import Any

import pytest
import requests

from tests.support import Cluster, refusal_status, run_cli, tls_context

pytestmark = pytest.mark.integration
SECRET_VALUE = "hunter2-not-for-bob"


def call(cluster: Cluster, cert: tuple[str, str], method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, cluster.url + path, cert=cert, verify=cluster.ca, timeout=60, **kwargs)


def submit(cluster: Cluster, cert: tuple[str, str], **body: Any) -> requests.Response:
    return call(cluster, cert, "POST", "/api/jobs/", json={"entrypoint": "sleep 600", **body})


def tail_status(cluster: Cluster, cert: tuple[str, str], job_id: str) -> int:
    """The HTTP status of the log tail's WebSocket upgrade (101 when the gateway lets it through)."""
    host, port = cluster.url.removeprefix("https://").rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=tls_context(cluster, cert), timeout=30)
    try:
        conn.request(
            "GET",
            f"/api/jobs/{job_id}/logs/tail",
            headers={
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
            },
        )
        return conn.getresponse().status
    finally:
        conn.close()


def records_for(cluster: Cluster, request_id: str) -> list[dict[str, Any]]:
    return [r for r in cluster.audit_records() if r.get("request_id") == request_id]


def wait_terminal(cluster: Cluster, cert: tuple[str, str], job_id: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if call(cluster, cert, "GET", f"/api/jobs/{job_id}").json()["status"] in ("STOPPED", "SUCCEEDED", "FAILED"):
            return
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not end")


def same_error(a: requests.Response, b: requests.Response) -> None:
    """Two gateway answers that must be indistinguishable apart from what the caller asked (the route's action,
    the job id named in the path as `resource`) and the request id (also in `explain`)."""
    assert (a.status_code, a.headers.get("content-type")) == (b.status_code, b.headers.get("content-type"))

    def strip(r: requests.Response) -> dict[str, object]:
        body = {k: v for k, v in r.json().items() if k not in ("request_id", "resource", "action")}
        if "explain" in body:
            body["explain"] = str(body["explain"]).replace(r.json()["request_id"], "ID")
        return body

    assert strip(a) == strip(b)


def test_ownership_across_two_developers(cluster: Cluster) -> None:
    suffix = uuid.uuid4().hex[:6]
    alice = cluster.issue(f"alice-{suffix}", groups=("developers",))
    bob = cluster.issue(f"bob-{suffix}", groups=("developers",))
    viewer = cluster.issue(f"vera-{suffix}", groups=("viewers",))
    nobody = cluster.issue(f"nobody-{suffix}")
    created = submit(cluster, alice, runtime_env={"env_vars": {"MY_SETTING": SECRET_VALUE}})
    assert created.status_code == 200, created.text
    job_id = created.json()["submission_id"]
    try:
        # The owner sees the job, its env values and its logs.
        mine = call(cluster, alice, "GET", f"/api/jobs/{job_id}")
        assert mine.status_code == 200 and mine.json()["runtime_env"]["env_vars"]["MY_SETTING"] == SECRET_VALUE
        assert job_id in {j.get("submission_id") for j in call(cluster, alice, "GET", "/api/jobs/").json()}
        assert call(cluster, alice, "GET", f"/api/jobs/{job_id}/logs").status_code == 200

        # Another developer: not in the list, and every job route answers as for a job that does not exist.
        listed = call(cluster, bob, "GET", "/api/jobs/").json()
        assert job_id not in {j.get("submission_id") for j in listed}
        assert all(j["metadata"].get("raywarden.owner", "").endswith(f"bob-{suffix}") for j in listed)
        missing = call(cluster, bob, "GET", "/api/jobs/raysubmit_doesnotexist1")
        assert missing.status_code == 404
        for method, path in (
            ("GET", f"/api/jobs/{job_id}"),
            ("GET", f"/api/jobs/{job_id}/logs"),
            ("POST", f"/api/jobs/{job_id}/stop"),
            ("DELETE", f"/api/jobs/{job_id}"),
        ):
            hidden = call(cluster, bob, method, path)
            same_error(hidden, missing)
            [record] = [r for r in records_for(cluster, hidden.json()["request_id"]) if r["kind"] == "request"]
            assert record["decision"] == "deny" and record["status"] == 404
            assert "may not view this job" in record["reason"] and record["policy_version"]
        # Admins get the same 404 for a job that truly does not exist.
        same_error(call(cluster, cluster.admin_cert, "GET", "/api/jobs/raysubmit_doesnotexist1"), missing)
        assert tail_status(cluster, bob, job_id) == 404
        assert tail_status(cluster, bob, "raysubmit_doesnotexist1") == 404
        assert tail_status(cluster, alice, job_id) == 101

        # A viewer sees the job with env values redacted, and may not stop it (403: it may view it).
        seen = call(cluster, viewer, "GET", f"/api/jobs/{job_id}")
        assert seen.status_code == 200 and seen.json()["runtime_env"]["env_vars"] == {"MY_SETTING": "<redacted>"}
        in_list = [j for j in call(cluster, viewer, "GET", "/api/jobs/").json() if j.get("submission_id") == job_id]
        assert in_list[0]["runtime_env"]["env_vars"] == {"MY_SETTING": "<redacted>"}
        assert SECRET_VALUE not in call(cluster, viewer, "GET", "/api/jobs/").text
        assert refusal_status(call(cluster, viewer, "POST", f"/api/jobs/{job_id}/stop")) == 403
        assert refusal_status(call(cluster, viewer, "DELETE", f"/api/jobs/{job_id}")) == 403
        assert refusal_status(submit(cluster, viewer)) == 403
        # No group at all: nothing.
        assert refusal_status(call(cluster, nobody, "GET", "/api/jobs/")) == 403
        assert call(cluster, nobody, "GET", f"/api/jobs/{job_id}").status_code == 404
        # Admins see everything, values included.
        admin_view = call(cluster, cluster.admin_cert, "GET", f"/api/jobs/{job_id}").json()
        assert admin_view["runtime_env"]["env_vars"]["MY_SETTING"] == SECRET_VALUE

        # The job still runs: nothing bob did reached Ray.
        assert call(cluster, alice, "GET", f"/api/jobs/{job_id}").json()["status"] in ("PENDING", "RUNNING")
        assert call(cluster, alice, "POST", f"/api/jobs/{job_id}/stop").json() == {"stopped": True}
        wait_terminal(cluster, alice, job_id)
        assert call(cluster, alice, "DELETE", f"/api/jobs/{job_id}").json() == {"deleted": True}
    finally:
        call(cluster, cluster.admin_cert, "POST", f"/api/jobs/{job_id}/stop")


@pytest.mark.parametrize(
    "runtime_env",
    [
        {"pip": ["requests", "--index-url https://evil.example/simple"]},
        {"pip": ["git+https://github.com/evil/pkg.git"]},
        {"conda": {"channels": ["evil"], "dependencies": ["numpy"]}},
        {"image_uri": "docker.io/evil/image"},
        {"env_vars": {"PIP_INDEX_URL": "https://evil.example/simple"}},
    ],
    ids=["index-url", "git", "conda-channel", "image", "env-pip-index"],
)
def test_runtime_env_escapes_are_refused_and_nothing_reaches_ray(cluster: Cluster, runtime_env: dict[str, Any]) -> None:
    dev = cluster.issue(f"esc-{uuid.uuid4().hex[:6]}", groups=("developers",))
    submission_id = f"escape-{uuid.uuid4().hex[:8]}"
    refused = submit(cluster, dev, submission_id=submission_id, runtime_env=runtime_env)
    assert refusal_status(refused) == 403 and refused.json()["error"] == "forbidden"
    [record] = [r for r in records_for(cluster, refused.json()["request_id"]) if r["kind"] == "request"]
    assert record["decision"] == "deny" and record["action"] == "jobs.submit"
    assert "no policy permits it" in record["reason"] and record["policy_version"]
    assert submission_id not in {j.get("submission_id") for j in cluster.ray_jobs()}


def test_resource_limits_are_enforced(cluster: Cluster) -> None:
    dev = cluster.issue(f"lim-{uuid.uuid4().hex[:6]}", groups=("developers",))
    for body in ({"entrypoint_num_cpus": 5}, {"entrypoint_num_gpus": 1}, {"entrypoint_resources": {"TPU": 1}}):
        assert refusal_status(submit(cluster, dev, **body)) == 403, body


def test_broken_policy_reload_is_refused_and_the_old_set_stays(cluster: Cluster) -> None:
    folder = cluster.state.policy_dir
    folder.mkdir(exist_ok=True)
    viewer = cluster.issue(f"rl-{uuid.uuid4().hex[:6]}", groups=("viewers",))
    before = call(cluster, viewer, "GET", "/api/jobs/")
    assert before.status_code == 200
    bad = folder / "broken.cedar"
    good = folder / "no-viewers.cedar"
    try:
        bad.write_text('@id("typo")\npermit(principal, action, resource) when { resource.ownr == "x" };\n')
        refused = run_cli(cluster, "policy", "reload", "--json")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert json.loads(refused.stdout)["accepted"] is False
        assert "broken.cedar" in refused.stderr
        reloads = [r for r in cluster.audit_records() if r.get("kind") == "policy" and r.get("event") == "reload"]
        assert reloads[-1]["accepted"] is False and "broken.cedar" in reloads[-1]["reason"]
        still = call(cluster, viewer, "GET", "/api/jobs/")
        assert still.status_code == 200  # the old set is in force

        bad.unlink()
        good.write_text('@id("ops-no-viewers")\nforbid(principal in Raywarden::Group::"viewers", action, resource);\n')
        accepted = run_cli(cluster, "policy", "reload", "--json")
        assert accepted.returncode == 0, accepted.stderr
        version = json.loads(accepted.stdout)["version"]
        denied = call(cluster, viewer, "GET", "/api/jobs/")
        assert refusal_status(denied) == 403
        [record] = [r for r in records_for(cluster, denied.json()["request_id"]) if r["kind"] == "request"]
        assert record["policy_ids"] == ["ops-no-viewers"] and record["policy_version"] == version
        explained = run_cli(cluster, "policy", "explain", "--request-id", denied.json()["request_id"], "--json")
        assert explained.returncode == 0, explained.stderr
        data = json.loads(explained.stdout)
        assert data["decision"] == "deny" and data["policy_ids"] == ["ops-no-viewers"]
        assert data["recorded"]["policy_version"] == version
    finally:
        bad.unlink(missing_ok=True)
        good.unlink(missing_ok=True)
        run_cli(cluster, "policy", "reload")
    assert call(cluster, viewer, "GET", "/api/jobs/").status_code == 200

"""The review's runtime_env findings replayed against real Ray through the gateway: each exact request and its
variants refused for a developer with the fact that names why, audited, nothing reaching Ray; the suspected
log_files escape confirmed on Ray itself; giant numbers a 400 with a hint."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support import Cluster, refusal_status, run_cli

pytestmark = pytest.mark.integration


def submit(cluster: Cluster, cert: tuple[str, str], raw: bytes) -> requests.Response:
    return requests.post(
        cluster.url + "/api/jobs/",
        data=raw,
        headers={"Content-Type": "application/json"},
        cert=cert,
        verify=cluster.ca,
        timeout=60,
    )


def records(cluster: Cluster, request_id: str) -> list[dict[str, Any]]:
    return [r for r in cluster.audit_records() if r.get("request_id") == request_id]


def body(submission_id: str, runtime_env: dict[str, Any]) -> bytes:
    return json.dumps({"entrypoint": "echo hi", "submission_id": submission_id, "runtime_env": runtime_env}).encode()


REVIEW = {
    "pip packages as a file on the node": ({"pip": {"packages": "ray_current_cluster"}}, "spec_file:pip"),
    "pip packages as an absolute file": ({"pip": {"packages": "/tmp/ray/reqs.txt"}}, "spec_file:pip"),
    "uv file on the node": ({"uv": "ray_current_cluster"}, "spec_file:uv"),
    "conda bracket channel": ({"conda": {"dependencies": ["numpy[channel=evilchan]"]}}, "conda_channel:evilchan"),
    "conda bracket channel quoted": (
        {"conda": {"dependencies": ["numpy[channel='evilchan']"]}},
        "conda_channel:evilchan",
    ),
    "conda bracket url": (
        {"conda": {"dependencies": ["numpy[url=https://evil.example/numpy-1-0.conda]"]}},
        "conda_channel:https://evil.example/numpy-1-0.conda",
    ),
    "pip ./evil.whl": ({"pip": ["./evil.whl"]}, "pip_direct_ref:./evil.whl"),
    "pip evil.whl": ({"pip": ["evil-1.0-py3-none-any.whl"]}, "pip_direct_ref:evil-1.0-py3-none-any.whl"),
    "log_files absolute": ({"config": {"log_files": ["/etc/cron.d/evil"]}}, "log_file:/etc/cron.d/evil"),
    "log_files dot-dot": ({"config": {"log_files": ["../../../x.log"]}}, "log_file:../../../x.log"),
}


@pytest.mark.parametrize("name", sorted(REVIEW))
def test_the_reviews_runtime_env_requests_are_refused_and_named(cluster: Cluster, name: str) -> None:
    runtime_env, fact = REVIEW[name]
    dev = cluster.issue(f"rv-{uuid.uuid4().hex[:6]}", groups=("developers",))
    submission_id = f"review-{uuid.uuid4().hex[:8]}"
    refused = submit(cluster, dev, body(submission_id, runtime_env))
    assert refusal_status(refused) == 403, refused.text
    [record] = [r for r in records(cluster, refused.json()["request_id"]) if r["kind"] == "request"]
    assert record["decision"] == "deny" and record["action"] == "jobs.submit"
    assert fact in record["policy_input"]["resource_attrs"]["runtime_env_facts"]
    assert submission_id not in {j.get("submission_id") for j in cluster.ray_jobs()}
    # `policy explain` replays the record and shows the same fact.
    explained = run_cli(cluster, "policy", "explain", "--request-id", refused.json()["request_id"], "--json")
    assert explained.returncode == 0, explained.stderr
    replay = json.loads(explained.stdout)
    assert replay["decision"] == "deny" and fact in replay["resource_attrs"]["runtime_env_facts"]


def test_log_files_write_outside_rays_log_directory(cluster: Cluster) -> None:
    """Section 6, confirmed: Ray's runtime-env agent opens os.path.join(log_dir, name) for each config.log_files
    entry, so an absolute path creates (and appends to) any file Ray's user may write. Only admins may ask."""
    folder = Path(tempfile.mkdtemp(prefix="rw-logfiles-"))
    try:
        os.chmod(folder, 0o1777)  # noqa: S103 - Ray may run as its own user: it must be able to write here
        target = folder / "outside.log"
        runtime_env = {"config": {"log_files": [str(target)]}}
        dev = cluster.issue(f"lf-{uuid.uuid4().hex[:6]}", groups=("developers",))
        assert refusal_status(submit(cluster, dev, body(f"lf-dev-{uuid.uuid4().hex[:8]}", runtime_env))) == 403
        assert not target.exists()
        allowed = submit(cluster, cluster.admin_cert, body(f"lf-admin-{uuid.uuid4().hex[:8]}", runtime_env))
        assert allowed.status_code == 200, allowed.text
        deadline = time.monotonic() + 120
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert target.exists(), "Ray's agent did not open the log file outside its log directory"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        # Literals too long to be a sane amount never reach the number parser (the body's bounds).
        (b'{"entrypoint": "echo", "entrypoint_num_cpus": 1' + b"0" * 400 + b"}", "more than 32 characters"),
        (b'{"entrypoint": "echo", "entrypoint_num_cpus": 1e400}', "number"),
        (b'{"entrypoint": "echo", "entrypoint_memory": 1' + b"0" * 400 + b"}", "more than 32 characters"),
        (b'{"entrypoint": "echo", "entrypoint_resources": {"TPU": 1' + b"0" * 400 + b"}}", "more than 32 characters"),
        # Short literals above the submission model's bounds.
        (b'{"entrypoint": "echo", "entrypoint_num_cpus": 100000000000000000000}', "less than or equal to"),
        (b'{"entrypoint": "echo", "entrypoint_num_gpus": 1e30}', "less than or equal to"),
        (b'{"entrypoint": "echo", "entrypoint_memory": 100000000000000000000}', "less than or equal to"),
    ],
    ids=["cpus-int", "cpus-float", "memory", "resource", "cpus-bound", "gpus-bound", "memory-bound"],
)
def test_giant_numbers_are_a_400_with_a_hint_and_an_audited_refusal(cluster: Cluster, raw: bytes, why: str) -> None:
    dev = cluster.issue(f"gn-{uuid.uuid4().hex[:6]}", groups=("developers",))
    refused = submit(cluster, dev, raw)
    assert refused.status_code == 400, refused.text
    assert why in refused.json()["error"] and refused.json()["hint"]
    [record] = [r for r in records(cluster, refused.json()["request_id"]) if r["kind"] == "request"]
    assert record["decision"] == "deny" and record["status"] == 400 and why in record["reason"]

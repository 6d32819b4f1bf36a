"""Uploaded packages through the gateway, against real Ray: a stored package is never replaced, so nobody
can swap the code behind another user's working_dir (gateway/packages.py)."""

from __future__ import annotations

import io
import secrets
import time
import zipfile

import pytest
import requests

from tests.support import Cluster

pytestmark = pytest.mark.integration


def _package(marker: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("marker.txt", marker + "\n")
    return buffer.getvalue()


def test_a_stored_package_cannot_be_replaced(cluster: Cluster) -> None:
    tag = secrets.token_hex(3)
    owner = cluster.issue(f"pkg-owner-{tag}", groups=("developers",))
    other = cluster.issue(f"pkg-other-{tag}", groups=("developers",))
    name = f"_ray_pkg_{secrets.token_hex(8)}.zip"
    url = f"{cluster.url}/api/packages/gcs/{name}"
    assert requests.get(url, cert=owner, verify=cluster.ca, timeout=30).status_code == 404
    stored = requests.put(url, data=_package(f"original-{tag}"), cert=owner, verify=cluster.ca, timeout=60)
    assert stored.status_code == 200, stored.text

    refused = []
    for cert in (other, owner, cluster.admin_cert):
        replaced = requests.put(url, data=_package(f"poisoned-{tag}"), cert=cert, verify=cluster.ca, timeout=60)
        assert replaced.status_code == 409, replaced.text
        assert "cannot be replaced" in replaced.json()["error"] and replaced.json()["hint"]
        refused.append(replaced.headers["x-request-id"])
    time.sleep(0.5)  # outcome records are group-committed after the answer
    outcomes = [r for r in cluster.audit_records() if r.get("kind") == "outcome" and r.get("request_id") in refused]
    assert [r["status"] for r in outcomes] == [409, 409, 409]
    assert all("immutable" in r["reason"] for r in outcomes)

    # The owner's job runs the code that was stored first.
    sid = f"pkg-{tag}"
    body = {"entrypoint": "cat marker.txt", "submission_id": sid, "runtime_env": {"working_dir": f"gcs://{name}"}}
    submitted = requests.post(f"{cluster.url}/api/jobs/", json=body, cert=owner, verify=cluster.ca, timeout=60)
    assert submitted.status_code == 200, submitted.text
    deadline = time.monotonic() + 120
    status = None
    while time.monotonic() < deadline and status not in ("SUCCEEDED", "FAILED", "STOPPED"):
        time.sleep(1)
        status = next(j["status"] for j in cluster.ray_jobs() if j.get("submission_id") == sid)
    logs = requests.get(f"{cluster.url}/api/jobs/{sid}/logs", cert=owner, verify=cluster.ca, timeout=30).json()
    assert status == "SUCCEEDED", logs
    assert f"original-{tag}" in logs["logs"] and "poisoned" not in logs["logs"]

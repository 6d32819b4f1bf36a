"""Stock `ray job` tells the truth about a gateway refusal (issue 16): the gateway's reason, the action, the
request id and the explain command, and, after Ray's version check, never Ray's advice about its own token.

Stock Ray reaches the gateway as its users do: `ray job SUB --address https://GATEWAY --headers
'{"Authorization": "Bearer TOKEN"}' --verify CA`. The refusals are real ones of the shared cluster's default
policies: a developer's forbidden runtime_env, a viewer stopping a job, anyone reaching for a job they may not
see. Ray's client puts its token advice after any 401 or 403 (ray/dashboard/modules/dashboard_sdk.py), and on
its version check no other status shows a body at all: there the gateway's words come first, with a note that
the advice after them does not apply.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.support import Cluster, run_cli

pytestmark = pytest.mark.integration

RAY = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
FORBIDDEN_ENV = '{"pip": ["--index-url https://pypi.evil.example/simple", "requests"]}'
RAYS_ADVICE = ("get-auth-token", "RAY_AUTH_MODE", "Token authentication is enabled")
_REQUEST_ID = re.compile(r'"request_id":\s*"([0-9a-f]{32})"')


@dataclass(frozen=True)
class Caller:
    cluster: Cluster
    token: str

    def ray_job(self, sub: str, *args: str) -> str:
        """A stock `ray job` command; its whole output (Ray prints a traceback on failure)."""
        words, rest = list(args), []
        if "--" in words:
            at = words.index("--")
            words, rest = words[:at], words[at:]
        headers = json.dumps({"Authorization": f"Bearer {self.token}"})
        command = [RAY, "job", sub, *words, "--address", self.cluster.url, "--headers", headers]
        command += ["--verify", self.cluster.ca, *rest]
        result = subprocess.run(
            command, env=self.cluster.env(), capture_output=True, text=True, timeout=300, check=False
        )
        assert result.returncode == 1, result.stdout + result.stderr
        return result.stdout + result.stderr


def _token(cluster: Cluster, name: str, *groups: str, ttl_s: int = 3600) -> str:
    cert = cluster.issue(name, groups=groups)
    resp = requests.post(
        f"{cluster.url}/raywarden/v1/token", json={"ttl_seconds": ttl_s}, cert=cert, verify=cluster.ca, timeout=30
    )
    resp.raise_for_status()
    return str(resp.json()["token"])


@pytest.fixture(scope="module")
def admins_job(cluster: Cluster) -> Iterator[str]:
    submitted = run_cli(cluster, "job", "submit", "--no-wait", "--json", "--", "sleep", "600", check=True)
    job = str(json.loads(submitted.stdout)["submission_id"])
    yield job
    run_cli(cluster, "job", "stop", job)


def _said(cluster: Cluster, output: str, status: int, action: str) -> dict[str, object]:
    """The refusal the output shows: its request id is audited with this status and action."""
    ids = _REQUEST_ID.findall(output)
    assert ids, output
    decision = next(r for r in cluster.audit_records() if r.get("request_id") == ids[-1] and r["kind"] == "request")
    assert decision["status"] == status and decision["action"] == action, decision
    assert f"raywarden policy explain --request-id {ids[-1]}" in output
    return decision


def test_a_forbidden_runtime_env_reads_as_the_gateways_reason(cluster: Cluster) -> None:
    dev = Caller(cluster, _token(cluster, "stock-dev", "developers"))
    before = len(cluster.ray_jobs())
    output = dev.ray_job("submit", "--runtime-env-json", FORBIDDEN_ENV, "--", "true")
    assert "status code 400" in output and '"status":403' in output
    assert '"error":"forbidden"' in output and '"action":"jobs.submit"' in output
    assert "pip_option:--index-url" in output and "developers-submit" in output
    assert not any(words in output for words in RAYS_ADVICE), output
    _said(cluster, output, 403, "jobs.submit")
    assert len(cluster.ray_jobs()) == before


def test_a_viewer_stopping_a_job_reads_what_was_refused(cluster: Cluster, admins_job: str) -> None:
    viewer = Caller(cluster, _token(cluster, "stock-viewer", "viewers"))
    for sub in ("stop", "delete"):
        output = viewer.ray_job(sub, admins_job)
        assert f'"action":"jobs.{sub}"' in output and f"Job::{admins_job}" in output
        assert f"no permit for jobs.{sub} admits" in output and "developers-own-jobs" in output
        assert not any(words in output for words in RAYS_ADVICE), output
        _said(cluster, output, 403, f"jobs.{sub}")
    assert next(j for j in cluster.ray_jobs() if j["submission_id"] == admins_job)["status"] in ("PENDING", "RUNNING")


def test_someone_elses_job_is_no_such_job_and_its_owner_stays_unnamed(cluster: Cluster, admins_job: str) -> None:
    dev = Caller(cluster, _token(cluster, "stock-dev2", "developers"))
    for sub in ("status", "logs", "stop", "delete"):
        output = dev.ray_job(sub, admins_job)
        assert "status code 404" in output and '"error":"no such job"' in output, sub
        assert f"Job::{admins_job}" in output and "/user/admin" not in output and "did not apply" not in output
        assert not any(words in output for words in RAYS_ADVICE), output
        decision = _said(cluster, output, 404, "jobs.read" if sub == "status" else f"jobs.{sub}")
        assert "answered 404" in str(decision["reason"])


def test_on_the_version_check_the_gateways_words_come_before_rays_advice(cluster: Cluster) -> None:
    """Ray's client shows a body there only with its advice after it: the body says the advice does not apply."""
    nobody = Caller(cluster, _token(cluster, "stock-nobody"))  # in no group: even the version check is refused
    output = nobody.ray_job("list")
    answer = output[output.index('{"error"') :]
    assert '"action":"cluster.version"' in answer and "does not apply" in answer
    assert answer.index("does not apply") < answer.index("Token authentication is enabled but")
    _said(cluster, output, 403, "cluster.version")

    cert = cluster.issue("stock-expired", groups=("developers",))
    issued = requests.post(
        f"{cluster.url}/raywarden/v1/token", json={"ttl_seconds": 1}, cert=cert, verify=cluster.ca, timeout=30
    ).json()
    deadline = dt.datetime.fromisoformat(issued["expires_at"]) + dt.timedelta(seconds=32)  # past the leeway
    while dt.datetime.now(dt.timezone.utc) < deadline:
        subprocess.run(["sleep", "1"], check=True)
    output = Caller(cluster, issued["token"]).ray_job("list")
    answer = output[output.index('{"error"') :]
    assert "your bearer token has expired" in answer and "raywarden token" in answer and "does not apply" in answer
    assert answer.index("does not apply") < answer.index("Token authentication is enabled but")

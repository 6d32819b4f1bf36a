"""The revoked-certificate attack, replayed with the real CLI against a real cluster: carol's `raywarden job`
caches a bearer token (token.json) next to her key; a thief copies the folder; the administrator runs
`raywarden revoke cert SERIAL`. From then on neither the certificate nor the cached token lists or submits
anything, at any gateway worker, and no job is created. tests/unit/gateway/test_app_token_binding.py covers
the variants offline."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from ray.exceptions import AuthenticationError as RayAuthenticationError
from ray.job_submission import JobSubmissionClient

from raywarden.gateway.runinfo import workers_file
from raywarden.pki.certs import load_cert, serial_hex
from tests.support import Cluster, run_cli

pytestmark = pytest.mark.integration


def _cli(cluster: Cluster, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`raywarden ARGS` on a machine whose RAYWARDEN_HOME is ``home`` and that has no state dir (a laptop)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYWARDEN_"))}
    env.update(RAYWARDEN_HOME=str(home), RAYWARDEN_STATE_DIR=str(home / "no-state-here"))
    return subprocess.run(
        [sys.executable, "-m", "raywarden.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _fresh(cluster: Cluster, method: str, path: str, token: str, n: int, **kw: Any) -> list[requests.Response]:
    """``n`` requests with the bearer token, each on a new connection, from several threads: the kernel hands
    them to every gateway worker."""

    def one(_: int) -> requests.Response:
        with requests.Session() as session:
            return session.request(
                method,
                cluster.url + path,
                headers={"Authorization": f"Bearer {token}"},
                verify=cluster.ca,
                timeout=60,
                **kw,
            )

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def test_revoking_a_copied_certificate_stops_the_token_cached_next_to_it(cluster: Cluster, tmp_path: Path) -> None:
    name = f"carol-{secrets.token_hex(3)}"
    added = json.loads(run_cli(cluster, "user", "add", name, "--group", "developers", "--json", check=True).stdout)
    laptop, thief = tmp_path / "laptop", tmp_path / "thief"
    code, fingerprint = added["code"], added["ca_fingerprint"]
    login = _cli(
        cluster, laptop, "login", cluster.url, "--code", code, "--ca-fingerprint", fingerprint, "--profile", "carol"
    )
    assert login.returncode == 0, login.stderr
    profile = laptop / "profiles" / "carol"
    assert _cli(cluster, laptop, "job", "list", "--profile", "carol").returncode == 0  # mints and caches the token
    cached = profile / "token.json"
    assert cached.stat().st_mode & 0o777 == 0o600
    token = json.loads(cached.read_text())
    serial = serial_hex(load_cert(profile / "client.crt"))
    claims = _claims(token["token"])
    assert claims["cert_serial"] == serial and claims["sub"].endswith(f"/user/{name}")

    # The laptop is stolen: the thief has the key, the certificate and the cached token.
    shutil.copytree(laptop, thief)
    assert {r.status_code for r in _fresh(cluster, "GET", "/api/jobs/", token["token"], 4)} == {200}

    revoked = run_cli(cluster, "revoke", "cert", serial, "--reason", "keyCompromise", check=True)
    assert f"Revoked certificate {serial}" in revoked.stdout and "Bearer tokens issued with it" in revoked.stdout

    # No sleep: the next request at every worker is refused.
    cert = (str(thief / "profiles" / "carol" / "client.crt"), str(thief / "profiles" / "carol" / "client.key"))
    by_cert = requests.get(cluster.url + "/api/jobs/", cert=cert, verify=cluster.ca, timeout=60)
    assert by_cert.status_code == 401 and by_cert.json()["reason"] == f"your client certificate {serial} is revoked"
    refused = _fresh(cluster, "GET", "/api/jobs/", token["token"], 30)
    assert {r.status_code for r in refused} == {401}
    shown = refused[0].json()
    assert shown["reason"] == f"your bearer token was issued with client certificate {serial}, which is revoked"
    gone = f"{name}-after-revoke"
    submitted = _fresh(
        cluster, "POST", "/api/jobs/", token["token"], 6, json={"entrypoint": "echo stolen", "submission_id": gone}
    )
    assert {r.status_code for r in submitted} == {401}

    # Stock Ray's client with the stolen token, as `ray job submit --headers` would use it.
    with pytest.raises((RuntimeError, RayAuthenticationError, requests.HTTPError), match=r"401|revoked"):
        client = JobSubmissionClient(
            cluster.url, headers={"Authorization": f"Bearer {token['token']}"}, verify=cluster.ca
        )
        client.submit_job(entrypoint="echo stolen", submission_id=gone)

    # The thief's CLI: the cached token is refused, and so is minting a new one with the revoked certificate.
    for args in (("job", "list"), ("job", "submit", "--submission-id", gone, "--", "echo", "stolen")):
        args = (*args[:2], "--profile", "carol", *args[2:])
        result = _cli(cluster, thief, *args)
        assert result.returncode != 0 and "revoked" in result.stderr, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr

    assert all(job.get("submission_id") != gone for job in cluster.ray_jobs())
    ids = {r.headers["x-request-id"] for r in refused + submitted}
    records = [r for r in cluster.audit_records() if r.get("request_id") in ids]
    decisions = [r for r in records if r["kind"] == "request"]
    assert len(decisions) == len(ids) and len([r for r in records if r["kind"] == "outcome"]) == len(ids)
    assert {r["status"] for r in records if r["kind"] == "outcome"} == {401}
    for record in decisions:
        assert record["decision"] == "deny"
        assert record["reason"] == f"token id {token['jti']} was minted with certificate {serial}, which is revoked"
    workers = json.loads(workers_file(cluster.state).read_text())["workers"]
    if len(workers) > 1:
        time.sleep(0.5)
        assert {r["gateway_pid"] for r in decisions} == set(workers)


def _claims(token: str) -> dict[str, Any]:
    found: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return found

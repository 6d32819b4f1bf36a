"""Replay: a job (Ray's user, Ray's token) submits straight to Ray's loopback dashboard a job whose metadata names
alice as its owner. The gateway must not file it under alice: it is nobody's, shown to admins only, as submitted
outside the gateway; alice's own jobs stay hers, env values and all."""

from __future__ import annotations

import json
import os
import secrets

import pytest
import requests

from raywarden.cluster.runstate import read_run_state
from tests import attack_jobs
from tests.support import Cluster, run_cli

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="Ray runs as a user of its own only when started as root"),
]

FORGE = """import json, os, secrets, sys, urllib.request
port, owner = sys.argv[1:3]
sid = "forged-" + secrets.token_hex(4)  # chosen here: no record of the gateway's names it
token = open(os.environ["RAY_AUTH_TOKEN_PATH"]).read().strip()
body = {"entrypoint": "sleep 600", "submission_id": sid, "metadata": {"raywarden.owner": owner,
        "raywarden.owner_seal": "A" * 43}}
req = urllib.request.Request(f"http://127.0.0.1:{port}/api/jobs/", data=json.dumps(body).encode(),
                             headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
print("RESULT " + json.dumps({"answer": urllib.request.urlopen(req).read().decode(), "sid": sid}))
"""


def test_a_job_submitted_to_ray_directly_belongs_to_no_one(cluster: Cluster) -> None:
    alice_name = f"alice-{secrets.token_hex(3)}"
    alice = cluster.issue(alice_name, groups=("developers",))
    alice_spiffe = f"spiffe://{cluster.state.load_config().trust_domain}/user/{alice_name}"
    own = attack_jobs.submit(cluster, alice, "print('RESULT {}')", runtime_env={"env_vars": {"K": "v"}})
    bob = attack_jobs.developer(cluster)
    run = read_run_state(cluster.state)
    assert run is not None
    forged = str(attack_jobs.run(cluster, bob, FORGE, str(run.ports.dashboard), alice_spiffe)["sid"])
    try:
        mine = requests.get(f"{cluster.url}/api/jobs/", cert=alice, verify=cluster.ca, timeout=30).json()
        ids = {j["submission_id"] for j in mine}
        assert own in ids and forged not in ids
        assert next(j for j in mine if j["submission_id"] == own)["metadata"]["raywarden.owner"] == alice_spiffe
        for who in (alice, bob):
            resp = requests.get(f"{cluster.url}/api/jobs/{forged}", cert=who, verify=cluster.ca, timeout=30)
            assert resp.status_code == 404, resp.text
            stop = requests.post(f"{cluster.url}/api/jobs/{forged}/stop", cert=who, verify=cluster.ca, timeout=30)
            assert stop.status_code in (403, 404), stop.text
        # The admin sees it, with no owner, as submitted outside the gateway, and what it claimed.
        details = requests.get(
            f"{cluster.url}/api/jobs/{forged}", cert=cluster.admin_cert, verify=cluster.ca, timeout=30
        )
        metadata = details.json()["metadata"]
        assert "raywarden.owner" not in metadata
        assert metadata["raywarden.outside"] == "submitted outside the gateway"
        assert metadata["raywarden.claimed_owner"] == alice_spiffe
        listed = run_cli(cluster, "job", "list", "--wide")
        line = next(x for x in listed.stdout.splitlines() if x.strip().startswith(forged))
        assert "submitted outside the gateway" in line and alice_name not in line, listed.stdout
        rows = json.loads(run_cli(cluster, "job", "list", "--json", check=True).stdout)
        row = next(r for r in (rows if isinstance(rows, list) else rows["jobs"]) if r["submission_id"] == forged)
        assert row["owner"] is None and row["owner_short"] == "(submitted outside the gateway)"
        # No audit record says anyone submitted it through the gateway.
        assert not [r for r in cluster.audit_records() if r.get("action") == "jobs.submit" and forged in json.dumps(r)]
    finally:
        requests.post(
            f"{cluster.dashboard_url()}/api/jobs/{forged}/stop",
            headers={"Authorization": f"Bearer {cluster.ray_token()}"},
            timeout=30,
        )

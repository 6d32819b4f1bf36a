"""`raywarden policy validate|test|explain` without a running cluster (the real CLI, as a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

CASES = """
limits: {developer_max_cpus: 2}
cases:
  - name: developer submits a plain job
    principal: alice
    groups: [developers]
    action: jobs.submit
    resource: {entrypoint: python train.py, runtime_env: {pip: [requests]}, entrypoint_num_cpus: 2}
    expect: allow
    policies: [developers-submit]
  - name: custom index refused
    principal: alice
    groups: [developers]
    action: jobs.submit
    resource: {runtime_env: {pip: ["--index-url https://evil/simple", requests]}}
    expect: deny
  - name: cpu limit from the case file
    principal: alice
    groups: [developers]
    action: jobs.submit
    resource: {entrypoint_num_cpus: 3}
    expect: deny
  - name: someone else's job
    principal: alice
    groups: [developers]
    action: jobs.stop
    resource: {owner: bob}
    expect: deny
  - name: viewer reads any job, from a token
    principal: vera
    groups: [viewers]
    action: jobs.read
    resource: {owner: bob}
    context: {auth_method: token, source: 10.1.2.3, auth_age_s: 30}
    expect: allow
"""


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYWARDEN_"))}
    env["RAYWARDEN_HOME"] = str(tmp_path / "home")
    return subprocess.run(
        [sys.executable, "-m", "raywarden.cli.main", *args, "--state-dir", str(tmp_path / "none")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_validate_lists_policies_and_refuses_a_broken_dir(tmp_path: Path) -> None:
    ok = cli(tmp_path, "policy", "validate", "--json")
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert data["valid"] and "admins-all" in {p["id"] for p in data["policies"]}
    ops = tmp_path / "ops"
    ops.mkdir()
    (ops / "typo.cedar").write_text('permit(principal, action, resource) when { resource.ownr == "x" };')
    bad = cli(tmp_path, "policy", "validate", str(ops))
    assert bad.returncode == 1
    assert "typo.cedar" in bad.stderr and "does not match the schema" in bad.stderr
    assert f"policy '{ops / 'typo.cedar'}#0' ({ops / 'typo.cedar'}:1)" in bad.stderr
    (ops / "typo.cedar").write_text('// one\n@id("broken")\npermit (principal, action resource);\n')
    broken = cli(tmp_path, "policy", "validate", str(ops))
    assert broken.returncode == 1 and f"{ops / 'typo.cedar'}:3:27: unexpected token `resource`" in broken.stderr


def test_cases_pass_and_a_mismatch_fails(tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(CASES)
    ok = cli(tmp_path, "policy", "test", str(cases), "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)["passed"] == 5
    cases.write_text(CASES.replace("expect: deny\n  - name: cpu", "expect: allow\n  - name: cpu"))
    bad = cli(tmp_path, "policy", "test", str(cases))
    assert bad.returncode == 1
    assert "FAIL custom index refused" in bad.stdout and "expected allow, got deny" in bad.stdout
    cases.write_text("cases: [{principal: a, action: jobs.read, expect: maybe}]")
    assert cli(tmp_path, "policy", "test", str(cases)).returncode == 2


def test_explain_names_the_deciding_policy(tmp_path: Path) -> None:
    out = cli(
        tmp_path,
        "policy",
        "explain",
        "--principal",
        "alice",
        "--group",
        "developers",
        "--action",
        "jobs.delete",
        "--owner",
        "alice",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["decision"] == "allow" and data["policy_ids"] == ["developers-own-jobs"]
    assert data["policies"][0]["source"] == "default/developers.cedar"
    denied = cli(
        tmp_path,
        "policy",
        "explain",
        "--principal",
        "alice",
        "--group",
        "developers",
        "--action",
        "jobs.submit",
        "--resource-json",
        '{"runtime_env": {"image_uri": "evil"}}',
    )
    assert denied.returncode == 0 and "deny: no policy permits this" in denied.stdout
    assert "runtime_env_facts not in allowed_facts: container, key:image_uri" in denied.stdout
    assert cli(tmp_path, "policy", "explain", "--action", "jobs.read").returncode == 2


def test_explain_replays_submissions_recorded_before_the_flat_runtime_env_facts() -> None:
    """Audit records written before submissions carried runtime_env_facts still replay, and decide alike."""
    from raywarden.cli.policy import _request_from_record
    from raywarden.policy.jobattrs import runtime_env_attrs
    from tests.unit.policy.policy_support import engine, spiffe

    eng = engine()
    for pip, expected in ((["requests"], True), (["--index-url https://evil/simple", "requests"], False)):
        env = runtime_env_attrs({"pip": pip})
        attrs = {
            "submission_id": "s",
            "owner": spiffe("alice"),
            "entrypoint": "python x.py",
            "entrypoint_milli_cpus": 0,
            "entrypoint_milli_gpus": 0,
            "entrypoint_memory": 0,
            "entrypoint_resources": [],
            "entrypoint_resources_max_milli": 0,
            "label_selector_keys": [],
            "metadata_keys": [],
            "runtime_env": env,
        }
        record = {
            "request_id": "r",
            "principal": spiffe("alice"),
            "action": "jobs.submit",
            "resource": "NewJob::s",
            "policy_input": {
                "groups": ["developers"],
                "resource_attrs": attrs,
                "context": {
                    "auth_method": "certificate",
                    "source_ip": "127.0.0.1",
                    "auth_age_s": 10,
                    "time": 0,
                    "hour_utc": 0,
                    "weekday_utc": 3,
                },
            },
        }
        assert eng.decide(_request_from_record(record), strict=True).allowed is expected


def test_explain_names_the_offending_runtime_env_fact(tmp_path: Path) -> None:
    body = '{"runtime_env": {"pip": ["--index-url https://evil/simple", "torch"]}, "entrypoint_num_cpus": 8}'
    args = ["policy", "explain", "--principal", "alice", "--group", "developers", "--action", "jobs.submit"]
    out = cli(tmp_path, *args, "--resource-json", body, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["decision"] == "deny" and "pip_option:--index-url" in data["summary"]
    (candidate,) = data["candidates"]
    assert candidate["id"] == "developers-submit" and candidate["where"] == "default/developers.cedar:36"
    details = [c["detail"] for c in candidate["conditions"] if c["outcome"] == "failed"]
    assert details == [
        "runtime_env_facts not in allowed_facts: pip_direct_ref:https://evil/simple, pip_option:--index-url",
        "entrypoint_milli_cpus 8000 > 4000",
    ]
    human = cli(tmp_path, *args, "--resource-json", body)
    assert "failed" in human.stdout and "entrypoint_milli_cpus 8000 > 4000" in human.stdout
    assert "permit admins-all (default/admins.cedar:2) does not apply" in human.stdout

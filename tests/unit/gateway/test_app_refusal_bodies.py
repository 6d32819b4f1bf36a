"""What a refusal tells the caller (issue 16, "refusals that explain"): the action, the resource, what failed
and the request id, with the command that explains it; never more than the caller may know (nothing about
the route table for strangers, nothing about a job they may not see), and to Ray's own job client never a
401 or 403 it would bury under its advice about Ray's token."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from tests.unit.gateway.conftest import Gateway

pytestmark = pytest.mark.unit

FORBIDDEN_ENV = {"pip": ["--index-url https://pypi.evil.example/simple", "requests"]}
RAY_CLIENT = {"user-agent": "python-requests/2.32.3"}  # what Ray's JobSubmissionClient sends


def _outcome(gateway: Gateway, request_id: str) -> dict[str, Any]:
    return gateway.records_of(request_id)[1]


def test_a_policy_refusal_names_action_resource_facts_and_the_explain_command(gateway: Gateway) -> None:
    dev = gateway.bearer("dora", "developers")
    resp = gateway.client.post("/api/jobs/", json={"entrypoint": "true", "runtime_env": FORBIDDEN_ENV}, headers=dev)
    assert resp.status_code == 403
    body = resp.json()
    request_id = body["request_id"]
    assert body["error"] == "forbidden" and body["hint"]  # the fields every client already reads
    assert body["action"] == "jobs.submit" and body["resource"].startswith("NewJob::")
    assert "pip_option:--index-url" in body["reason"] and "developers-submit" in body["reason"]
    assert any("pip_option:--index-url" in fact for fact in body["facts"])
    assert body["explain"].endswith(f"`raywarden policy explain --request-id {request_id}`")
    assert ".cedar" not in resp.text  # policies are named by id; the files they live in stay on the head
    decision = gateway.audited(request_id, "deny", 403)
    assert "pip_option:--index-url" in decision["reason"]
    assert gateway.ray.requests("POST") == []


def test_rays_job_client_gets_the_refusal_as_a_400_that_carries_the_true_status(gateway: Gateway) -> None:
    dev = {**gateway.bearer("dora", "developers"), **RAY_CLIENT}
    resp = gateway.client.post("/api/jobs/", json={"entrypoint": "true", "runtime_env": FORBIDDEN_ENV}, headers=dev)
    assert resp.status_code == 400
    body = resp.json()
    assert body["status"] == 403 and body["error"] == "forbidden" and "pip_option:--index-url" in body["reason"]
    assert "www-authenticate" not in resp.headers
    decision = gateway.records_of(body["request_id"])[0]
    assert decision["decision"] == "deny" and decision["status"] == 403
    outcome = _outcome(gateway, body["request_id"])
    assert outcome["status"] == 400 and outcome["refusal_status"] == 403


def test_a_stranger_gets_401_everywhere_with_the_note(gateway: Gateway) -> None:
    """An unauthenticated answer never depends on the route, for Ray's client too: 401 and the note."""
    for path in ("/api/version", "/api/jobs/", "/api/jobs/x/logs", "/no/such/route"):
        resp = gateway.client.get(path, headers={"authorization": "Bearer not.a.jwt", **RAY_CLIENT})
        assert resp.status_code == 401 and "does not apply" in resp.json()["note"], path
        assert "status" not in resp.json() and "action" not in resp.json()


def test_the_version_check_keeps_its_status_and_says_rays_advice_does_not_apply(gateway: Gateway) -> None:
    """Ray's client shows a body only for 401 and 403 there (anything else: the status alone)."""
    resp = gateway.client.get("/api/version", headers=RAY_CLIENT)
    assert resp.status_code == 401 and "Bearer" in resp.headers["www-authenticate"]
    body = resp.json()
    assert "ray get-auth-token" in body["note"] and "does not apply" in body["note"]
    assert "status" not in body and "action" not in body
    nobody = gateway.bearer("nobody")  # authenticated, in no group: the version check itself is refused
    resp = gateway.client.get("/api/version", headers={**nobody, **RAY_CLIENT})
    assert resp.status_code == 403 and resp.json()["action"] == "cluster.version" and resp.json()["note"]


def test_other_clients_keep_true_statuses(gateway: Gateway) -> None:
    for agent in ("curl/8.5.0", "Python/3.11 aiohttp/3.14.5", "Mozilla/5.0"):
        resp = gateway.client.get("/api/jobs/", headers={"authorization": "Bearer not.a.jwt", "user-agent": agent})
        assert resp.status_code == 401 and "status" not in resp.json() and "note" not in resp.json()
    # Console and dashboard answers are not Ray's job API: true statuses for everyone.
    resp = gateway.client.get("/dashboard/api/v0/tasks", headers={**gateway.bearer("nobody"), **RAY_CLIENT})
    assert resp.status_code == 403


def test_strangers_learn_nothing_of_the_route_table(gateway: Gateway) -> None:
    known = gateway.client.post("/api/jobs/abc/stop", headers=RAY_CLIENT)
    unknown = gateway.client.post("/api/jobs/abc/explode", headers=RAY_CLIENT)
    assert known.status_code == unknown.status_code == 401
    assert set(known.json()) == set(unknown.json()) == {"error", "request_id", "hint", "note"}
    assert {k: v for k, v in known.json().items() if k != "request_id"} == {
        k: v for k, v in unknown.json().items() if k != "request_id"
    }


def test_a_job_one_may_not_see_reads_like_a_missing_one_and_its_explanation_stays_in_the_log(
    gateway: Gateway,
) -> None:
    alice = gateway.principal("alice", "developers")
    gateway.ray.add_job("alice-run", alice)
    bob = gateway.bearer("bob", "developers")
    for headers in (bob, {**bob, **RAY_CLIENT}):
        hidden = gateway.client.post("/api/jobs/alice-run/stop", headers=headers)
        missing = gateway.client.post("/api/jobs/nobody-run/stop", headers=headers)
        assert hidden.status_code == missing.status_code == 404
        shown, absent = hidden.json(), missing.json()
        assert set(shown) == set(absent) == {"error", "action", "resource", "request_id", "explain", "hint"}
        assert shown["error"] == absent["error"] == "no such job" and shown["hint"] == absent["hint"]
        assert shown["resource"] == "Job::alice-run" and absent["resource"] == "Job::nobody-run"
        assert "alice" not in hidden.text.replace("alice-run", "")  # the owner is not named
        decision = gateway.audited(shown["request_id"], "deny", 404)
        assert "answered 404" in decision["reason"] and "developers-own-jobs" in decision["reason"]
    assert gateway.ray.requests("POST") == []


def test_what_a_credentials_holder_may_know_and_a_forger_may_not(gateway: Gateway) -> None:
    ident = gateway.principal("erin", "developers")
    issued = gateway.tokens.issue(ident, now=time.time() - 7200, ttl_s=600)
    gateway.store.record_token(issued.jti, ident, issued.expires_at, issued_by="test")
    expired = gateway.client.get("/api/jobs/", headers={"authorization": f"Bearer {issued.token.reveal()}"})
    assert expired.status_code == 401 and "expired" in expired.json()["reason"]
    assert "raywarden token" in expired.json()["reason"] and "action" not in expired.json()
    good = gateway.bearer("erin", "developers")["authorization"].removeprefix("Bearer ")
    claims = jwt.decode(good, options={"verify_signature": False})
    head, _, sig = good.split(".")
    _, payload, _ = jwt.encode({**claims, "sub": "spiffe://td.test/user/admin"}, "k" * 32).split(".")
    forged = gateway.client.get("/api/jobs/", headers={"authorization": f"Bearer {head}.{payload}.{sig}"})
    assert forged.status_code == 401 and "reason" not in forged.json()
    record = gateway.records_of(forged.json()["request_id"])[0]
    assert "signature" in record["reason"]

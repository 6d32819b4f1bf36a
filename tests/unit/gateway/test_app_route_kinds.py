"""Each kind of route, through the whole app: Ray's API (forwarded with Ray's token, the client's credentials
stripped, answers filtered per job), the dashboard, console pages, the console's anonymous pages, and
raywarden's control API."""

from __future__ import annotations

import json

import pytest

from tests.unit.gateway.conftest import WS_URL, Gateway

pytestmark = pytest.mark.unit


def test_ray_api_forwards_with_rays_token_and_without_the_callers(gateway: Gateway) -> None:
    admin = gateway.bearer("admin")
    resp = gateway.client.get("/api/version", headers={**admin, "cookie": "x=1", "x-ray-authorization": "Bearer no"})
    assert resp.status_code == 200 and resp.json()["ray_version"] == "2.60.0"
    (seen,) = gateway.ray.requests("GET", "/api/version")
    assert seen.headers["Authorization"] == f"Bearer {gateway.ray.token}"
    assert "Cookie" not in seen.headers and "X-Ray-Authorization" not in seen.headers


def test_ray_api_submission_is_stamped_with_its_owner(gateway: Gateway) -> None:
    alice = gateway.bearer("alice", "developers")
    body = {"entrypoint": "echo hi", "metadata": {"raywarden.owner": spiffe_of("mallory")}}
    resp = gateway.client.post("/api/jobs/", json=body, headers=alice)
    assert resp.status_code == 200, resp.text
    (seen,) = gateway.ray.requests("POST", "/api/jobs/")
    assert json.loads(seen.body)["metadata"]["raywarden.owner"] == gateway.principal("alice")


def spiffe_of(name: str) -> str:
    return f"spiffe://td.test/user/{name}"


def test_ray_api_job_list_is_filtered_per_job(gateway: Gateway) -> None:
    alice, bob = gateway.principal("alice", "developers"), gateway.principal("bob", "developers")
    gateway.ray.add_job("a1", alice, runtime_env={"env_vars": {"K": "secret-a"}})
    gateway.ray.add_job("b1", bob, runtime_env={"env_vars": {"K": "secret-b"}})
    mine = gateway.client.get("/api/jobs/", headers=gateway.bearer("alice"))
    assert [j["submission_id"] for j in mine.json()] == ["a1"] and "secret-a" in mine.text
    viewer = gateway.client.get("/api/jobs/", headers=gateway.bearer("vera", "viewers"))
    assert {j["submission_id"] for j in viewer.json()} == {"a1", "b1"} and "secret" not in viewer.text
    outcome = gateway.records_of(mine.headers["x-request-id"])[-1]
    assert (outcome["shown"], outcome["hidden"]) == (1, 1)


def test_dashboard_lists_keep_the_callers_jobs_only(gateway: Gateway) -> None:
    alice, bob = gateway.principal("alice", "developers"), gateway.principal("bob", "developers")
    gateway.ray.add_job("a1", alice, runtime_env={"env_vars": {"K": "secret-a"}})
    gateway.ray.add_job("b1", bob, runtime_env={"env_vars": {"K": "secret-b"}})
    resp = gateway.client.get("/dashboard/api/v0/tasks?detail=1&limit=100", headers=gateway.bearer("bob"))
    assert resp.status_code == 200
    tasks = resp.json()["data"]["result"]["result"]
    assert [t["name"] for t in tasks] == ["task_of_b1"] and "secret-a" not in resp.text


def test_dashboard_scoped_answers_refuse_other_jobs_before_ray_is_asked(gateway: Gateway) -> None:
    job = gateway.ray.add_job("a1", gateway.principal("alice", "developers"))
    bob = gateway.bearer("bob", "developers")
    for path in (
        f"/dashboard/api/v0/tasks/timeline?job_id={job['job_id']}",
        f"/dashboard/events?job_id={job['job_id']}",
        f"/dashboard/api/data/datasets/{job['job_id']}",
    ):
        resp = gateway.client.get(path, headers=bob)
        assert resp.status_code == 404 and resp.json()["error"] == "no such job", path
    assert gateway.ray.requests(path="/api/v0/tasks/timeline") == []
    assert gateway.ray.requests(path="/events") == []


def test_console_page_with_a_bearer_token(gateway: Gateway) -> None:
    resp = gateway.client.get("/ui/", headers=gateway.bearer("alice", "developers"))
    assert resp.status_code == 200 and "text/html" in resp.headers["content-type"]
    assert (
        "spiffe://td.test/user/alice" in resp.text and "default-src 'none'" in resp.headers["content-security-policy"]
    )
    records = gateway.records_of(resp.headers["x-request-id"])
    assert [r["kind"] for r in records] == ["request", "outcome"] and records[0]["action"] == "console.view"


def test_console_admin_pages_are_for_admins(gateway: Gateway) -> None:
    assert gateway.client.get("/ui/admin/principals", headers=gateway.bearer("admin")).status_code == 200
    refused = gateway.client.get("/ui/admin/principals", headers=gateway.bearer("alice", "developers"))
    assert refused.status_code == 403


def test_console_anonymous_pages(gateway: Gateway) -> None:
    page = gateway.client.get("/ui/signin?code=abc.def")
    assert page.status_code == 200 and 'name="code" value="abc.def"' in page.text
    refused = gateway.client.post("/ui/signin", data={"code": "abc.def"})
    assert refused.status_code == 401 and "invalid" in refused.text
    record = gateway.records_of(refused.headers["x-request-id"])[0]
    assert record["decision"] == "deny" and record["event"] == "session.refused"
    assert "abc.def" not in json.dumps(gateway.records())  # the code never reaches the log
    css = gateway.client.get("/ui/static/console.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    home = gateway.client.get("/", follow_redirects=False)
    assert home.status_code == 308 and home.headers["location"] == "/ui/"


def test_control_api_anonymous_and_with_identity(gateway: Gateway) -> None:
    ca = gateway.client.get("/raywarden/v1/ca")
    assert ca.status_code == 200 and "BEGIN CERTIFICATE" in ca.json()["access_ca_pem"]
    # A bearer token never mints tokens; a client certificate does.
    by_token = gateway.client.post("/raywarden/v1/token", json={}, headers=gateway.bearer("alice", "developers"))
    assert by_token.status_code == 403
    with gateway.with_certificate(gateway.certificate("alice", "developers")):
        issued = gateway.client.post("/raywarden/v1/token", json={"ttl_seconds": 60})
    assert issued.status_code == 200 and issued.json()["token_type"] == "Bearer"
    records = gateway.records_of(issued.headers["x-request-id"])
    assert records[0]["auth_method"] == "certificate" and records[0]["decision"] == "allow"
    assert issued.json()["token"] not in json.dumps(gateway.records())


def test_websocket_log_tail_is_decided_and_relayed(gateway: Gateway) -> None:
    gateway.ray.add_job("a1", gateway.principal("alice", "developers"))
    with gateway.client.websocket_connect(f"{WS_URL}/api/jobs/a1/logs/tail", headers=gateway.bearer("alice")) as ws:
        assert ws.receive_text() == "tail of a1\n"
        # Ray ends this tail: leaving before the gateway relayed the close would cancel the handler mid-way.
        assert ws.receive()["type"] == "websocket.close"
    records = [r for r in gateway.records() if r.get("path") == "/api/jobs/a1/logs/tail"]
    assert records and records[0]["decision"] == "allow" and records[0]["action"] == "jobs.logs_tail"

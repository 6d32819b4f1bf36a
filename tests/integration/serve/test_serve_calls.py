"""Ray Serve's data path behind the gateway, against a real Serve app: who may call what, and the records.

Per-app policy between two service accounts, the refusals (anonymous, forged, expired, revoked: 401, audited),
404 for unknown apps without reaching Serve, bodies kept out of the audit log, and Serve's proxy on loopback.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.integration.serve.conftest import ServeCluster
from tests.support import run_cli

pytestmark = pytest.mark.integration


def _records(served: ServeCluster, request_id: str) -> list[dict[str, object]]:
    return [r for r in served.cluster.audit_records() if r.get("request_id") == request_id]


def _decision_and_outcome(served: ServeCluster, request_id: str) -> tuple[dict[str, object], dict[str, object]]:
    deadline = time.monotonic() + 10
    while True:
        found = _records(served, request_id)
        decisions = [r for r in found if r.get("kind") == "request"]
        outcomes = [r for r in found if r.get("kind") == "outcome"]
        if (decisions and outcomes) or time.monotonic() > deadline:
            assert len(decisions) == 1 and len(outcomes) == 1, found
            return decisions[0], outcomes[0]
        time.sleep(0.2)


def test_status_names_the_serve_listener_and_serve_stays_on_loopback(serve_cluster: ServeCluster) -> None:
    info = json.loads(run_cli(serve_cluster.cluster, "status", "--json", check=True).stdout)
    assert info["serve"]["url"] == serve_cluster.url
    assert info["serve"]["running"] is True
    proxy_port = int(info["serve"]["proxy"].rsplit(":", 1)[1])
    from raywarden.cluster.runstate import ray_listeners

    listeners = ray_listeners(serve_cluster.cluster.state)
    assert listeners.get(proxy_port) in ("127.0.0.1", "127.0.0.1:" + str(proxy_port)) or str(
        listeners.get(proxy_port, "")
    ).startswith("127.0.0.1"), listeners
    # Serve's gRPC proxy is off: nothing of Serve's listens on its default port 9000.
    assert 9000 not in listeners


def test_a_key_of_an_allowed_group_calls_echo_and_the_app_never_sees_it(serve_cluster: ServeCluster) -> None:
    key = serve_cluster.keys["chatbot"]
    resp = serve_cluster.call("POST", "/echo/v1/chat?x=1", key, data=b'{"prompt": "hi"}')
    assert resp.status_code == 200, resp.text
    seen = resp.json()
    assert seen["path"] == "/echo/v1/chat" and seen["query"] == "x=1" and seen["body_len"] == 16
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert "authorization" not in headers
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-request-id"] == resp.headers["x-request-id"]
    decision, outcome = _decision_and_outcome(serve_cluster, resp.headers["x-request-id"])
    assert decision["decision"] == "allow" and decision["action"] == "serve.invoke"
    assert decision["resource"] == 'ServeApp::"echo"' or "echo" in str(decision["resource"])
    assert decision["auth_method"] == "api_key" and decision["principal"].endswith("/sa/chatbot")  # type: ignore[union-attr]
    assert outcome["status"] == 200 and outcome["bytes_in"] == 16 and int(outcome["bytes_out"]) > 0  # type: ignore[call-overload]


def test_per_app_policy_between_two_service_accounts(serve_cluster: ServeCluster) -> None:
    outsider = serve_cluster.keys["outsider"]
    resp = serve_cluster.call("GET", "/echo/", outsider)
    assert resp.status_code == 403
    decision, outcome = _decision_and_outcome(serve_cluster, resp.headers["x-request-id"])
    assert decision["decision"] == "deny" and outcome["status"] == 403
    # The outsider's routes list is empty; the chatbot's shows what it may call.
    assert serve_cluster.call("GET", "/-/routes", outsider).json() == {}
    routes = serve_cluster.call("GET", "/-/routes", serve_cluster.keys["chatbot"]).json()
    assert routes.get("/echo") == "echo" and routes.get("/stream") == "stream"


def test_a_key_scoped_to_one_app_calls_no_other(serve_cluster: ServeCluster) -> None:
    scoped = serve_cluster.new_key("chatbot", "--app", "echo", "--ttl", "1h")
    assert serve_cluster.call("GET", "/echo/x", scoped).status_code == 200
    resp = serve_cluster.call("GET", "/stream?n=1&delay=0", scoped)
    assert resp.status_code == 403
    decision, _ = _decision_and_outcome(serve_cluster, resp.headers["x-request-id"])
    assert "serve-api-key-scope" in decision["policy_ids"]  # type: ignore[operator]


def test_unknown_apps_get_404_without_reaching_serve(serve_cluster: ServeCluster) -> None:
    key = serve_cluster.keys["chatbot"]
    for path in ("/nope", "/echox", "/ECHO", "/"):
        resp = serve_cluster.call("GET", path, key)
        assert resp.status_code == 404, path
        assert "no Serve application" in resp.json()["error"]
        decision, outcome = _decision_and_outcome(serve_cluster, resp.headers["x-request-id"])
        assert outcome["status"] == 404 and "no Serve route matches" in str(decision.get("reason", ""))
        assert "app" not in decision


def test_paths_with_two_readings_are_refused(serve_cluster: ServeCluster) -> None:
    key = serve_cluster.keys["chatbot"]
    for raw in ("/echo/../stream", "/echo%2Fx", "/echo/./x", "/echo//x", "/echo%5cx", "/echo/%2e%2e/stream"):
        import http.client
        import ssl

        context = ssl.create_default_context(cafile=serve_cluster.cluster.ca)
        host, port = serve_cluster.url.removeprefix("https://").split(":")
        conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=30)
        conn.request("GET", raw, headers={"Authorization": f"Bearer {key}"})
        status = conn.getresponse().status
        conn.close()
        assert status == 400, (raw, status)


@pytest.mark.parametrize(
    "credential",
    [None, "rwk_0123456789abcdef_" + "A" * 43, "rwk_short", "eyJhbGciOiJIUzI1NiJ9.e30.forged"],
    ids=["anonymous", "forged-key", "malformed-key", "forged-jwt"],
)
def test_missing_and_forged_credentials_get_401_and_are_audited(
    serve_cluster: ServeCluster, credential: str | None
) -> None:
    resp = serve_cluster.call("POST", "/echo/", credential, data=b"x")
    assert resp.status_code == 401
    assert "hint" in resp.json()
    decision, outcome = _decision_and_outcome(serve_cluster, resp.headers["x-request-id"])
    assert decision["decision"] == "deny" and decision["status"] == 401 and outcome["status"] == 401
    # The presented key is never written down.
    assert "rwk_0123456789abcdef_" not in json.dumps(_records(serve_cluster, resp.headers["x-request-id"]))


def test_key_lifecycle_expiry_revocation_and_last_use(serve_cluster: ServeCluster) -> None:
    cluster = serve_cluster.cluster
    created = json.loads(run_cli(cluster, "sa", "key", "create", "chatbot", "--ttl", "1h", "--json", check=True).stdout)
    key, key_id = created["key"], created["key_id"]
    assert key.startswith("rwk_" + key_id + "_")
    assert serve_cluster.call("GET", "/echo/", key).status_code == 200
    listed = json.loads(run_cli(cluster, "sa", "key", "list", "chatbot", "--json", check=True).stdout)
    mine = next(k for k in listed if k["key_id"] == key_id)
    assert mine["status"] == "active" and mine["last_used_at"] is not None and mine["last_used_from"] == "127.0.0.1"
    assert key not in json.dumps(listed) and key.split("_")[-1] not in cluster.state.identity_db.read_bytes().decode(
        "latin-1"
    )
    run_cli(cluster, "sa", "key", "revoke", key_id, "--reason", "test", check=True)
    started = time.monotonic()
    resp = serve_cluster.call("GET", "/echo/", key)
    assert resp.status_code == 401 and time.monotonic() - started < 5
    decision, _ = _decision_and_outcome(serve_cluster, resp.headers["x-request-id"])
    assert "revoked" in str(decision["reason"])
    again = run_cli(cluster, "sa", "key", "revoke", key_id)
    assert again.returncode != 0 and "already revoked" in again.stderr and "Traceback" not in again.stderr

    short = serve_cluster.new_key("chatbot", "--ttl", "2s")
    time.sleep(2.5)
    resp = serve_cluster.call("GET", "/echo/", short)
    assert resp.status_code == 401
    decision, _ = _decision_and_outcome(serve_cluster, resp.headers["x-request-id"])
    assert "expired" in str(decision["reason"])


def test_key_create_refuses_bad_input_without_a_traceback(serve_cluster: ServeCluster) -> None:
    cluster = serve_cluster.cluster
    for args, words in (
        (("nobody",), "no service account"),
        (("chatbot", "--ttl", "5y"), "not a duration"),
        (("chatbot", "--ttl", "900d"), "2 years"),
        (("chatbot", "--app", "bad/name"), "not an application name"),
    ):
        result = run_cli(cluster, "sa", "key", "create", *args)
        assert result.returncode != 0, args
        assert words in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert "rwk_" not in result.stdout


def test_bodies_are_never_recorded(serve_cluster: ServeCluster) -> None:
    marker = f"secret-body-{uuid.uuid4().hex}"
    resp = serve_cluster.call("POST", f"/echo/?q={marker}", serve_serve_key(serve_cluster), data=marker.encode())
    assert resp.status_code == 200 and marker in resp.text
    _decision_and_outcome(serve_cluster, resp.headers["x-request-id"])
    text = "".join(p.read_text() for p in serve_cluster.cluster.state.audit_dir.glob("audit-*.jsonl"))
    assert marker not in text


def serve_serve_key(served: ServeCluster) -> str:
    return served.keys["chatbot"]


def test_policy_explain_replays_a_serve_decision(serve_cluster: ServeCluster) -> None:
    resp = serve_cluster.call("GET", "/echo/", serve_cluster.keys["outsider"])
    assert resp.status_code == 403
    _decision_and_outcome(serve_cluster, resp.headers["x-request-id"])
    result = run_cli(
        serve_cluster.cluster, "policy", "explain", "--request-id", resp.headers["x-request-id"], "--json", check=True
    )
    explained = json.loads(result.stdout)
    assert explained["decision"] == "deny" and explained["action"] == "serve.invoke"
    assert explained["recorded"]["decision"] == "deny"
    ids = {c["id"] for c in explained["candidates"]}
    assert "serve-invoke-groups" in ids

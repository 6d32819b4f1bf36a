"""Streaming through the Serve listener (chunked, server-sent events, WebSockets) and limits held across the
gateway's workers, against real Serve apps."""

from __future__ import annotations

import ssl
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.integration.serve.conftest import GATE_CONCURRENCY, LIMITED_BURST, ServeCluster
from tests.integration.serve.test_serve_calls import _decision_and_outcome
from tests.support import run_cli

pytestmark = pytest.mark.integration
# Calls sent one after another while the gate holds a caller's every slot: each on a new connection.
EXTRA_CALLS = 6


def test_chunks_pass_through_as_the_generator_yields_them(serve_cluster: ServeCluster) -> None:
    resp = serve_cluster.call("GET", "/stream?n=4&delay=0.7", serve_cluster.keys["chatbot"], stream=True)
    assert resp.status_code == 200
    assert resp.headers.get("transfer-encoding") == "chunked"
    arrivals = []
    for chunk in resp.iter_content(chunk_size=None):
        arrivals.append((time.monotonic(), chunk))
    text = b"".join(c for _, c in arrivals).decode()
    assert [line.split()[1] for line in text.splitlines()] == ["0", "1", "2", "3"]
    # Not buffered: the first chunk was in hand well before the generator finished (3 pauses of 0.7 s).
    assert len(arrivals) >= 2 and arrivals[-1][0] - arrivals[0][0] > 1.0
    _, outcome = _decision_and_outcome(serve_cluster, resp.headers["x-request-id"])
    assert outcome["status"] == 200 and outcome["bytes_out"] == len(text.encode())


def test_server_sent_events_pass_through(serve_cluster: ServeCluster) -> None:
    resp = serve_cluster.call("GET", "/stream?n=3&delay=0.05&sse=1", serve_cluster.keys["chatbot"], stream=True)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = [line for line in resp.iter_lines() if line.startswith(b"data: ")]
    assert len(events) == 3


def _ssl(served: ServeCluster) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=served.cluster.ca)


def test_websockets_are_authorized_relayed_and_audited(serve_cluster: ServeCluster) -> None:
    uri = serve_cluster.url.replace("https://", "wss://") + "/sockets/ws"
    headers = {"Authorization": f"Bearer {serve_cluster.keys['chatbot']}"}
    with connect(uri, ssl=_ssl(serve_cluster), additional_headers=headers, open_timeout=60, proxy=None) as ws:
        request_id = ws.response.headers["x-request-id"]
        ws.send("hello")
        assert ws.recv(timeout=30) == "echo:hello"
        ws.send("again")
        assert ws.recv(timeout=30) == "echo:again"
    decision, outcome = _decision_and_outcome(serve_cluster, request_id)
    assert decision["decision"] == "allow" and decision["action"] == "serve.invoke" and decision.get("websocket")
    assert outcome["status"] == 101 and int(outcome["bytes_in"]) >= 10  # type: ignore[call-overload]

    for key, status in ((None, 401), (serve_cluster.keys["outsider"], 403)):
        refused = {"Authorization": f"Bearer {key}"} if key else {}
        with pytest.raises(InvalidStatus) as caught:
            connect(uri, ssl=_ssl(serve_cluster), additional_headers=refused, open_timeout=60, proxy=None).close()
        assert caught.value.response.status_code == status
        _decision_and_outcome(serve_cluster, caught.value.response.headers["x-request-id"])


def test_rate_limit_holds_across_workers_with_retry_after(serve_cluster: ServeCluster) -> None:
    # A key of its own account, so that no other test spends this caller's burst.
    run_cli(serve_cluster.cluster, "sa", "add", "limited-caller", "--group", "app-users", check=True)
    key = serve_cluster.new_key("limited-caller")
    total = LIMITED_BURST + 10

    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda _: serve_cluster.call("GET", "/limited/x", key), range(total)))
    codes = [a.status_code for a in answers]
    assert codes.count(200) == LIMITED_BURST, codes
    assert codes.count(429) == total - LIMITED_BURST, codes
    for answer in answers:
        if answer.status_code == 429:
            assert int(answer.headers["retry-after"]) >= 1
            assert "hint" in answer.json()
    pids = set()
    for answer in answers:
        decision, outcome = _decision_and_outcome(serve_cluster, answer.headers["x-request-id"])
        pids.add(decision["gateway_pid"])
        assert outcome["status"] == answer.status_code
    # The gateway runs a worker per core: the calls were spread over more than one, and the limit held.
    assert len(pids) >= 2, pids


def test_concurrency_limit_refuses_exactly_the_call_over_it_across_workers(serve_cluster: ServeCluster) -> None:
    """One caller holds GATE_CONCURRENCY calls open and sends one more, each on a new connection (any gateway
    worker takes it): the gate app keeps every call it answers open until released, so whatever the order,
    exactly one call finds every slot taken."""
    # An account of its own, so that no other test holds this caller's slots.
    run_cli(serve_cluster.cluster, "sa", "add", "gate-caller", "--group", "app-users", check=True)
    key = serve_cluster.new_key("gate-caller")
    gate = f"hold-{uuid.uuid4().hex[:12]}"

    def held_call(_: int) -> tuple[requests.Response, Iterator[bytes] | None]:
        resp = serve_cluster.call("GET", f"/gate/?hold={gate}", key, stream=True)
        if resp.status_code != 200:
            return resp, None
        lines = resp.iter_lines()  # kept: dropping it would close the connection, and end the call early
        assert next(lines) == b"held"  # Serve has the call, so the gateway holds its slot
        return resp, lines

    total = GATE_CONCURRENCY + 1
    with ThreadPoolExecutor(max_workers=total) as pool:
        calls = list(pool.map(held_call, range(total)))
    try:
        codes = sorted(resp.status_code for resp, _ in calls)
        assert codes == [200] * GATE_CONCURRENCY + [429], codes
        [refused] = [resp for resp, _ in calls if resp.status_code == 429]
        assert int(refused.headers["retry-after"]) >= 1
        assert "concurrency limit" in refused.json()["error"] and "hint" in refused.json()
        decision, outcome = _decision_and_outcome(serve_cluster, refused.headers["x-request-id"])
        assert decision["decision"] == "deny" and decision["status"] == 429 and decision["action"] == "serve.invoke"
        assert str(decision["reason"]).startswith("concurrency limit of caller:gate:")
        assert outcome["status"] == 429
        # While they are held, every further call is refused too, whichever worker takes it.
        more = [serve_cluster.call("GET", f"/gate/?hold={gate}", key) for _ in range(EXTRA_CALLS)]
        assert [resp.status_code for resp in more] == [429] * EXTRA_CALLS
        # The held calls' decisions are written before they are forwarded (their outcomes once they end).
        ids = {r.headers["x-request-id"] for r in more} | {r.headers["x-request-id"] for r, _ in calls}
        records = serve_cluster.cluster.audit_records(settle_s=0)
        pids = {r["gateway_pid"] for r in records if r.get("kind") == "request" and r["request_id"] in ids}
        assert len(pids) >= 2, pids  # the gateway runs a worker per core: the slots were counted across them
    finally:
        # Released (by the admin: another caller, with slots of its own), even when a check above failed.
        opened = requests.get(
            serve_cluster.url + f"/gate/?open={gate}",
            cert=serve_cluster.cluster.admin_cert,
            verify=serve_cluster.cluster.ca,
            timeout=60,
        )
    assert opened.status_code == 200, opened.text
    # Every held call ends as a whole answer, not cut short, and its slot is given back.
    for resp, lines in calls:
        if lines is not None:
            assert list(lines) == [b"released"]
            _, finished = _decision_and_outcome(serve_cluster, resp.headers["x-request-id"])
            assert finished["status"] == 200
    # The gateway gives a slot back just after the answer's last byte: a call right after may still find it.
    deadline = time.monotonic() + 60
    while (after := serve_cluster.call("GET", f"/gate/?hold={gate}", key)).status_code == 429:
        assert time.monotonic() < deadline, "the slots of finished calls were not given back"
        time.sleep(0.5)
    assert after.status_code == 200 and after.text == "held\nreleased\n"

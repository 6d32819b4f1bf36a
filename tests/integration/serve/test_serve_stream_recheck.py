"""A long answer (an LLM's token stream) does not outlive the decision it was let in by: while it streams, the
Serve listener checks the caller's credential and Cedar's decision again every second
(gateway/serve/listener.py, ``_revalidator``), so a caller removed from the group that let it call the
application is cut off, as a new call of theirs is refused.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.integration.serve.conftest import ServeCluster
from tests.support import run_cli

pytestmark = pytest.mark.integration
CHUNKS = 120  # 30 s of answer at one chunk every 0.25 s, three times the recheck interval


def test_a_stream_ends_once_the_caller_may_no_longer_call_the_app(serve_cluster: ServeCluster) -> None:
    cluster = serve_cluster.cluster
    run_cli(cluster, "sa", "add", "streamer", "--group", "app-users", check=True)
    key = serve_cluster.new_key("streamer")
    resp = serve_cluster.call("GET", f"/stream?n={CHUNKS}&delay=0.25", key, stream=True)
    assert resp.status_code == 200
    lines = resp.iter_lines()
    first = next(lines)
    assert first.startswith(b"chunk 0")
    run_cli(cluster, "sa", "groups", "streamer", "--remove", "app-users", check=True)
    assert serve_cluster.call("GET", "/stream?n=1", key).status_code == 403  # a new call is refused at once
    received = 1
    with pytest.raises(requests.exceptions.ChunkedEncodingError):  # cut, not ended as if complete
        for line in lines:
            received += line.startswith(b"chunk")
    assert received < CHUNKS, "the whole stream went to a caller that may no longer call the application"
    request_id = resp.headers["x-request-id"]
    outcome = [r for r in cluster.audit_records() if r.get("request_id") == request_id and r["kind"] == "outcome"]
    assert outcome and "no longer allowed" in outcome[0]["reason"], outcome


def test_an_answer_that_comes_after_the_caller_lost_access_is_not_delivered(serve_cluster: ServeCluster) -> None:
    """A completion that is not streamed arrives in one piece, long after the decision: it is checked again
    before any of it is sent."""
    cluster = serve_cluster.cluster
    run_cli(cluster, "sa", "add", "thinker", "--group", "app-users", check=True)
    key = serve_cluster.new_key("thinker")
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(serve_cluster.call, "POST", "/echo/complete?think=8", key, data=b"a prompt")
        time.sleep(2)  # the call is under way: the replica is thinking
        run_cli(cluster, "sa", "groups", "thinker", "--remove", "app-users", check=True)
        resp = pending.result(timeout=120)
    assert resp.status_code == 403 and "body_len" not in resp.text, resp.text
    records = [r for r in cluster.audit_records() if r.get("request_id") == resp.headers["x-request-id"]]
    assert [r["kind"] for r in records] == ["request", "outcome"], records
    assert records[0]["decision"] == "allow" and records[1]["status"] == 403, records
    assert "before the answer" in records[1]["reason"], records

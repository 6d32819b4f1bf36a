"""A long answer (an LLM's token stream) does not outlive the decision it was let in by: while it streams, the
Serve listener checks the caller's credential and Cedar's decision again every second
(gateway/serve/listener.py, ``_revalidator``), so a caller removed from the group that let it call the
application is cut off, as a new call of theirs is refused.
"""

from __future__ import annotations

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

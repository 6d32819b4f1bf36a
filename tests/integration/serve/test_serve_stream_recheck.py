"""A long answer (an LLM's token stream) outlives the decision it was let in by.

While a call streams, the Serve listener checks the caller's credential again every REVALIDATE_EVERY_S
(gateway/serve/listener.py, ``_revalidator``), but never the decision: a caller removed from the group that
let it call the application keeps receiving until the stream ends, for up to serve_max_duration_s (an hour by
default), although every new call of theirs is refused at once.
"""

from __future__ import annotations

import pytest

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
    received = 1 + sum(1 for line in lines if line.startswith(b"chunk"))
    assert received < CHUNKS, "the whole stream went to a caller that may no longer call the application"

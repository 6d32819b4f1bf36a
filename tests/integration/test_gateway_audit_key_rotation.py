"""`raywarden audit rotate-key` under a running gateway: every worker follows the new key without a restart, and
`audit verify` follows the chain from the old key and from the new one."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from raywarden.audit.layout import PUBLIC_KEY_NAME
from tests.conftest import free_port
from tests.integration.test_gateway_workers import decided_by, fresh_get, workers
from tests.support import Cluster, run_cli, start_cluster, stop_cluster

pytestmark = pytest.mark.integration


@pytest.fixture
def own() -> Iterator[Cluster]:
    """A cluster of its own: the rotation changes the key every later check of a shared cluster's log would use."""
    root = Path(tempfile.mkdtemp(prefix="rwt-"))
    try:
        yield start_cluster(root, port=free_port(), profile="auditkey")
    finally:
        stop_cluster(root)
        shutil.rmtree(root, ignore_errors=True)


def test_running_workers_follow_a_rotated_audit_key(own: Cluster, tmp_path: Path) -> None:
    cluster = own
    pids = workers(cluster)
    before = fresh_get(cluster, "/api/version", cluster.admin_cert, n=8)
    assert {r.status_code for r in before} == {200}
    old_public = tmp_path / "old-audit-key.pem"
    old_public.write_bytes((cluster.state.audit_dir / PUBLIC_KEY_NAME).read_bytes())
    rotated = json.loads(run_cli(cluster, "audit", "rotate-key", "--json", check=True).stdout)
    assert rotated["from"] != rotated["to"]

    seen: set[int] = set()
    for _ in range(5):  # the kernel spreads new connections over the workers, unevenly on a busy host
        answers = fresh_get(cluster, "/api/version", cluster.admin_cert, n=40)
        refused = [r.text[:300] for r in answers if r.status_code != 200]
        assert not refused, f"the gateway goes on serving after the rotation: {refused[:3]}"
        seen |= decided_by(cluster, answers)
        if seen == set(pids):
            break
    assert seen == set(pids), "every worker wrote after the rotation"
    assert workers(cluster) == pids, "no worker was restarted"
    run_cli(cluster, "audit", "checkpoint", check=True)  # a checkpoint by the new key over the new records

    for anchor in ([], ["--public-key", str(old_public)]):
        done = run_cli(cluster, "audit", "verify", "--json", *anchor)
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout)
        chain = [key for key, _ in report["key_chain"]]
        assert chain[-2:] == [rotated["from"], rotated["to"]], chain
    status = json.loads(run_cli(cluster, "status", "--json", check=True).stdout)
    assert status["audit_public_key"].strip() == (cluster.state.audit_dir / PUBLIC_KEY_NAME).read_text().strip()

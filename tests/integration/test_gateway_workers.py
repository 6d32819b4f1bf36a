"""The gateway's worker processes, as `raywarden up` runs them: one audit history, one revocation and one policy
set for all of them, metrics summed over them, a W3C trace in both records, uploads streamed through, and
after a SIGKILL an audit log that is incomplete, never tampered with."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests

from raywarden.cluster import runstate
from raywarden.gateway.runinfo import workers_file
from raywarden.identity.admin import IdentityAdmin
from raywarden.identity.store import IdentityStore
from raywarden.pki.certs import load_cert, serial_hex
from tests.support import Cluster, run_cli, tls_context

pytestmark = pytest.mark.integration


def workers(cluster: Cluster) -> list[int]:
    return list(json.loads(workers_file(cluster.state).read_text())["workers"])


def fresh_get(cluster: Cluster, path: str, cert: tuple[str, str], n: int = 24, **kw: Any) -> list[requests.Response]:
    """``n`` requests, each on a new connection, from several threads: the kernel hands them to every worker."""

    def one(_: int) -> requests.Response:
        with requests.Session() as session:
            return session.get(cluster.url + path, cert=cert, verify=cluster.ca, timeout=60, **kw)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def decided_by(cluster: Cluster, responses: list[requests.Response]) -> set[int]:
    ids = {r.headers["x-request-id"] for r in responses}
    time.sleep(0.5)  # outcome records are group-committed after the answer
    return {r["gateway_pid"] for r in cluster.audit_records() if r.get("request_id") in ids and r["kind"] == "request"}


def verify(cluster: Cluster) -> dict[str, Any]:
    result = run_cli(cluster, "audit", "verify", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def test_every_worker_serves_and_all_write_one_verified_history(cluster: Cluster) -> None:
    pids = workers(cluster)
    assert len(pids) == max(1, len(os.sched_getaffinity(0)))
    status = json.loads(run_cli(cluster, "status", "--json", check=True).stdout)
    assert sorted(status["gateway"]["workers"]) == sorted(pids)
    answers = fresh_get(cluster, "/api/version", cluster.admin_cert, n=40)
    assert {r.status_code for r in answers} == {200}
    if len(pids) > 1:
        assert decided_by(cluster, answers) == set(pids)  # both wrote into the one chain
    ids = {r.headers["x-request-id"] for r in answers}
    records = [r for r in cluster.audit_records() if r.get("request_id") in ids]
    assert sorted(r["kind"] for r in records) == ["outcome"] * 40 + ["request"] * 40
    report = verify(cluster)
    assert report["ok"] is True


def test_a_revocation_reaches_every_worker(cluster: Cluster) -> None:
    cert = cluster.issue("revokee", groups=("viewers",))
    assert {r.status_code for r in fresh_get(cluster, "/api/version", cert)} == {200}
    serial = serial_hex(load_cert(Path(cert[0])))
    IdentityStore.open(cluster.state.identity_db).revoke_certificate(serial, "test")
    refused = fresh_get(cluster, "/api/version", cert, n=30)
    assert {r.status_code for r in refused} == {401}
    if len(workers(cluster)) > 1:
        assert decided_by(cluster, refused) == set(workers(cluster))


def kept_sessions(n: int, cert: tuple[str, str] | None = None) -> list[requests.Session]:
    """``n`` sessions of one connection each: once opened, each stays with the worker that accepted it."""
    sessions = []
    for _ in range(n):
        session = requests.Session()
        session.mount("https://", requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=1))
        session.cert = cert
        sessions.append(session)
    return sessions


def test_a_revocation_reaches_connections_kept_alive_to_every_worker(cluster: Cluster) -> None:
    """Each worker remembers verified credentials (a certificate's parse, a token's signature, the store's
    answers while it is unchanged): a revocation must still refuse the very next request on a connection
    that authenticated a moment before, at every worker."""
    admin = IdentityAdmin(cluster.state, actor="test")
    admin.add("sa", "kept-bot", ["viewers"])
    issued = admin.sa_token("kept-bot", 600)
    bearer = {"authorization": f"Bearer {issued.token.reveal()}"}
    cert = cluster.issue("kept-user", groups=("viewers",))
    by_token, by_cert = kept_sessions(16), kept_sessions(16, cert)

    def each(sessions: list[requests.Session], **kw: Any) -> list[requests.Response]:
        return [s.get(cluster.url + "/api/version", verify=cluster.ca, timeout=60, **kw) for s in sessions]

    try:
        for _ in range(3):  # every connection authenticated, and its credential remembered, more than once
            assert {r.status_code for r in each(by_token, headers=bearer)} == {200}
            assert {r.status_code for r in each(by_cert)} == {200}
        admin.revoke_token(issued.jti, "test")
        refused = each(by_token, headers=bearer)
        assert {r.status_code for r in refused} == {401}
        IdentityStore.open(cluster.state.identity_db).revoke_certificate(serial_hex(load_cert(Path(cert[0]))), "test")
        refused += each(by_cert)
        assert {r.status_code for r in refused} == {401}
        if len(workers(cluster)) > 1:
            assert decided_by(cluster, refused) == set(workers(cluster))
    finally:
        for session in by_token + by_cert:
            session.close()


def test_a_policy_reload_reaches_every_worker_before_it_is_confirmed(cluster: Cluster) -> None:
    cert = cluster.issue("reloadee", groups=("viewers",))
    assert {r.status_code for r in fresh_get(cluster, "/api/version", cert)} == {200}
    policy = cluster.state.policy_dir / "no-reloadee.cedar"
    cluster.state.policy_dir.mkdir(exist_ok=True)
    policy.write_text(
        '@id("no-reloadee")\nforbid (principal == Raywarden::User::"spiffe://test.raywarden/user/reloadee", '
        "action, resource);\n"
    )
    try:
        result = run_cli(cluster, "policy", "reload", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        reload = next(
            r for r in reversed(cluster.audit_records()) if r.get("kind") == "policy" and r.get("event") == "reload"
        )
        assert reload["accepted"] is True and sorted(reload["workers"]) == sorted(workers(cluster))
        refused = fresh_get(cluster, "/api/version", cert, n=30)
        assert {r.status_code for r in refused} == {403}
        if len(workers(cluster)) > 1:
            assert decided_by(cluster, refused) == set(workers(cluster))
        assert {
            r["policy_version"]
            for r in cluster.audit_records()
            if r.get("request_id") in {x.headers["x-request-id"] for x in refused} and r["kind"] == "request"
        } == {reload["version"]}
    finally:
        policy.unlink()
        run_cli(cluster, "policy", "reload", check=True)


def _metrics(url: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in requests.get(url, timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def _total(values: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in values.items() if k.startswith(prefix))


def test_metrics_are_served_on_loopback_and_move(cluster: Cluster) -> None:
    status = json.loads(run_cli(cluster, "status", "--json", check=True).stdout)
    url = status["gateway"]["metrics_url"]
    assert url.startswith("http://127.0.0.1:")
    run = runstate.read_run_state(cluster.state)
    assert run is not None and run.gateway_metrics_port is not None
    prom_config = (cluster.state.root / "prometheus" / "prometheus.yml").read_text()
    if run.prometheus_port is not None:
        assert f"127.0.0.1:{run.gateway_metrics_port}" in prom_config
    before = _metrics(url)
    for name in (
        "raywarden_gateway_workers",
        "raywarden_gateway_certificate_days_left",
        "raywarden_gateway_decision_cache_hit_ratio",
        "raywarden_gateway_audit_queue_depth",
        'raywarden_gateway_upstream_errors_total{kind="connect"}',
    ):
        assert name in before, name
    assert before["raywarden_gateway_workers"] == len(workers(cluster))
    assert 80 < before["raywarden_gateway_certificate_days_left"] <= 90
    answers = fresh_get(cluster, "/api/jobs/", cluster.admin_cert, n=20)
    assert {r.status_code for r in answers} == {200}
    time.sleep(0.5)
    after = _metrics(url)
    key = 'raywarden_gateway_requests_total{action="jobs.list",decision="allow",status="200"}'
    assert after[key] - before.get(key, 0) >= 20
    for stage in ("authentication", "decision", "audit", "upstream"):
        count = f'raywarden_gateway_stage_seconds_count{{stage="{stage}"}}'
        assert after[count] > before.get(count, 0), stage
    assert after["raywarden_gateway_audit_fsync_seconds_count"] > before["raywarden_gateway_audit_fsync_seconds_count"]
    assert _total(after, "raywarden_gateway_decision_cache_") > _total(before, "raywarden_gateway_decision_cache_")
    assert after["raywarden_gateway_request_seconds_count"] >= before["raywarden_gateway_request_seconds_count"] + 20


def test_traceparent_is_continued_and_written_into_both_records(cluster: Cluster) -> None:
    trace, parent = secrets.token_hex(16), secrets.token_hex(8)
    resp = requests.get(
        cluster.url + "/api/version",
        cert=cluster.admin_cert,
        verify=cluster.ca,
        headers={"traceparent": f"00-{trace}-{parent}-01"},
        timeout=30,
    )
    assert resp.status_code == 200
    rid = resp.headers["x-request-id"]
    time.sleep(0.5)
    records = [r for r in cluster.audit_records() if r.get("request_id") == rid]
    assert [r["kind"] for r in records] == ["request", "outcome"]
    assert {r["trace_id"] for r in records} == {trace} and {r["parent_span_id"] for r in records} == {parent}
    assert len({r["span_id"] for r in records}) == 1
    bad = requests.get(
        cluster.url + "/api/version",
        cert=cluster.admin_cert,
        verify=cluster.ca,
        headers={"traceparent": f"00-{trace.upper()}-{parent}-01"},  # uppercase hex is invalid: a new trace
        timeout=30,
    )
    time.sleep(0.5)
    (decision,) = [r for r in cluster.audit_records() if r.get("request_id") == bad.headers["x-request-id"]][:1]
    assert decision["trace_id"] != trace and "parent_span_id" not in decision


def _gateway_rss(cluster: Cluster) -> int:
    run = runstate.read_run_state(cluster.state)
    assert run is not None
    total = 0
    for pid in [run.gateway_pid, *workers(cluster)]:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def test_a_100_mb_package_upload_streams_through_without_buffering(cluster: Cluster) -> None:
    size = 100 * 1000 * 1000
    name = f"_ray_pkg_{secrets.token_hex(8)}.zip"
    baseline = _gateway_rss(cluster)
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _gateway_rss(cluster))
            time.sleep(0.02)

    class Body:
        """100 MB read in pieces, with a length (so Content-Length, not chunked): never whole in this process."""

        def __init__(self) -> None:
            self.left = size
            self.chunk = os.urandom(1 << 20)

        def __len__(self) -> int:
            return self.left

        def read(self, n: int = -1) -> bytes:
            n = min(self.left, len(self.chunk) if n < 0 else min(n, len(self.chunk)))
            self.left -= n
            return self.chunk[:n]

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        resp = requests.put(
            f"{cluster.url}/api/packages/gcs/{name}",
            data=Body(),
            cert=cluster.admin_cert,
            verify=cluster.ca,
            timeout=600,
        )
    finally:
        done.set()
        sampler.join()
    assert resp.status_code == 200, resp.text
    assert peak - baseline < 32 * 1024 * 1024, f"gateway RSS grew by {(peak - baseline) / 2**20:.1f} MiB"
    again = requests.put(
        f"{cluster.url}/api/packages/gcs/{name}", data=b"x", cert=cluster.admin_cert, verify=cluster.ca, timeout=60
    )
    assert again.status_code == 409  # a stored package is never replaced


def test_after_sigkill_a_request_in_flight_is_incomplete_not_tampering(cluster: Cluster) -> None:
    submitted = requests.post(
        cluster.url + "/api/jobs/",
        json={"entrypoint": "python -c 'import time; print(1, flush=True); time.sleep(300)'"},
        cert=cluster.admin_cert,
        verify=cluster.ca,
        timeout=60,
    )
    assert submitted.status_code == 200, submitted.text
    job = submitted.json()["submission_id"]
    before = workers(cluster)
    ctx: ssl.SSLContext = tls_context(cluster, cluster.admin_cert)
    wss = cluster.url.replace("https://", "wss://")

    async def tail_then_kill() -> str:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{wss}/api/jobs/{job}/logs/tail", ssl=ctx) as ws:
                await asyncio.sleep(0.5)  # the allow is durable before the upgrade: now it is in flight
                rid = next(
                    r["request_id"]
                    for r in reversed(cluster.audit_records())
                    if r.get("kind") == "request" and r.get("path") == f"/api/jobs/{job}/logs/tail"
                )
                for pid in before:
                    os.kill(pid, signal.SIGKILL)
                await ws.receive(timeout=10)
                return rid

    rid = asyncio.run(tail_then_kill())
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            set(workers(cluster)) & set(before) or len(workers(cluster)) < len(before)
        ):
            time.sleep(0.2)
        assert not set(workers(cluster)) & set(before)  # the supervisor replaced both
        assert {r.status_code for r in fresh_get(cluster, "/api/version", cluster.admin_cert, n=8)} == {200}
        records = [r for r in cluster.audit_records() if r.get("request_id") == rid]
        assert [r["kind"] for r in records] == ["request"] and records[0]["decision"] == "allow"
        exits = {r["pid"] for r in cluster.audit_records() if r.get("event") == "worker_exit"}
        assert set(before) <= exits
        report = verify(cluster)
        assert report["ok"] is True
        assert report["completeness"]["without_outcome"] >= 1
        assert rid in report["completeness"]["examples"] or report["completeness"]["without_outcome"] > 20
        human = run_cli(cluster, "audit", "verify")
        assert human.returncode == 0 and "incomplete" in human.stdout and "not tampering" in human.stdout
    finally:
        requests.post(f"{cluster.url}/api/jobs/{job}/stop", cert=cluster.admin_cert, verify=cluster.ca, timeout=60)

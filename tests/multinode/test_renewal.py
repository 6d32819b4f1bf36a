"""Credentials renewed while the cluster works (issue 18): a head and a worker in network namespaces, with
3-minute node certificates and a 2-minute gateway certificate.

One job keeps starting short tasks on both nodes while the worker's node agent renews its certificate twice
(each time: restart lease, drain, Ray restarted with the new certificate, rejoin); it must succeed. Meanwhile
a client on the worker keeps one connection to the gateway open and opens a fresh one every 2 s: the gateway's
supervisor renews its certificate in place (same pid), its workers swap it in, the fresh connections get each
new certificate, the kept one keeps working on the certificate it started with.

Takes 6-8 minutes (two renewals of a 3-minute certificate, after start-up). What it saw is printed and
written to $RAYWARDEN_RENEWAL_REPORT (default /tmp/raywarden-renewal-report.json).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raywarden.pki.certs import load_cert, serial_hex
from raywarden.state import StateDir, runtime_dir_for
from tests.multinode import netns
from tests.multinode.support import GATEWAY_PORT, Setup

pytestmark = pytest.mark.multinode

REPORT: dict[str, Any] = {}
WANT_WORKER_IDS = 3  # the worker as it joined, then after each of two renewals


@pytest.fixture(scope="module")
def mn() -> Iterator[Setup]:
    reason = netns.unavailable()
    if reason:
        pytest.skip(f"multinode tests: {reason}")
    root = Path(tempfile.mkdtemp(prefix="rwrn-"))
    net = netns.create()
    setup = Setup(net, root, StateDir(root / "head" / "state"))
    try:
        init = setup.head(
            "init",
            "--listen",
            f"0.0.0.0:{GATEWAY_PORT}",
            "--trust-domain",
            "renew.raywarden",
            "--node-cert-ttl",
            "3m",
            "--gateway-cert-ttl",
            "2m",
            "--json",
        )
        setup.fingerprint = json.loads(init.stdout)["access_ca_fingerprint"]
        setup.head("up", "--node-ip", netns.ROLES["head"], "--num-cpus", "1", "--json")
        yield setup
    finally:
        _write_report()
        for role in ("worker", "head"):
            folder = root / role / "state"
            if folder.exists():
                setup.cli(role, "down", "--state-dir", str(folder), "--force", timeout=120)
            shutil.rmtree(runtime_dir_for(folder, separated=True), ignore_errors=True)
        netns.destroy(net)
        shutil.rmtree(root, ignore_errors=True)


def _write_report() -> None:
    path = Path(os.environ.get("RAYWARDEN_RENEWAL_REPORT", "/tmp/raywarden-renewal-report.json"))
    path.write_text(json.dumps(REPORT, indent=2, sort_keys=True) + "\n")
    print(f"\nrenewal report ({path}):")
    for key in ("job_id", "job_seconds", "gateway_pid", "gateway_workers", "node_renewals", "gateway_serials"):
        print(f"  {key}: {json.dumps(REPORT.get(key))}")


def _run(mn: Setup) -> dict[str, Any]:
    return dict(json.loads((mn.head_state.run_dir / "cluster.json").read_text()))


def _job_status(mn: Setup, job_id: str) -> str:
    return str(json.loads(mn.cli("head", "job", "status", job_id, "--json", check=True, timeout=60).stdout)["status"])


def test_a_job_runs_across_two_node_certificate_renewals_and_the_gateway_swaps_its_certificate(mn: Setup) -> None:
    started = time.monotonic()
    run = _run(mn)
    gateway_pid, head_ray_pid = run["gateway_pid"], run["ray_pid"]
    head_cert = serial_hex(load_cert(mn.head_state.node_cert))

    # A client on the worker host: one kept-alive connection, and a fresh one every 2 s.
    stop = mn.root / "keepalive.stop"
    rounds_file = mn.root / "keepalive.jsonl"
    client = mn.net.popen(
        "worker",
        [
            sys.executable,
            "-m",
            "tests.multinode.keepalive",
            netns.ROLES["head"],
            str(GATEWAY_PORT),
            str(mn.head_state.access_ca_cert),
            str(rounds_file),
            str(stop),
        ],
        env=mn.env("worker"),
        log=mn.root / "keepalive.log",
    )
    try:
        joined = mn.join("worker", mn.token(), state="state", name="worker-1")
        assert joined.returncode == 0, joined.stdout + joined.stderr
        worker = StateDir(mn.root / "worker" / "state")
        first_serial = serial_hex(load_cert(worker.root / "pki" / "node.crt"))
        agent_pid = json.loads(joined.stdout)["agent_pid"]

        submitted = mn.cli(
            "head",
            "job",
            "submit",
            "--no-wait",
            "--json",
            "--working-dir",
            str(netns.REPO / "tests/multinode/app"),
            "--",
            "python",
            "renewal_job.py",
            netns.ROLES["worker"],
            str(WANT_WORKER_IDS),
            "600",
            timeout=120,
        )
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        job_id = json.loads(submitted.stdout)["submission_id"]
        REPORT["job_id"] = job_id
        job_started = time.monotonic()
        status = "PENDING"
        while status in ("PENDING", "RUNNING") and time.monotonic() - job_started < 660:
            time.sleep(10)
            status = _job_status(mn, job_id)
        REPORT["job_seconds"] = round(time.monotonic() - job_started, 1)
        logs = mn.cli("head", "job", "logs", job_id, timeout=120).stdout
        REPORT["job_result"] = next((x for x in logs.splitlines() if x.startswith("RESULT ")), logs[-3000:])
        assert status == "SUCCEEDED", logs[-5000:]
    finally:
        stop.touch()
        client.wait(timeout=60)

    records = mn.audit()
    renewals = [r for r in records if r.get("kind") == "node" and r.get("event") == "node.cert.renew"]
    rejoins = [r for r in records if r.get("kind") == "node" and r.get("event") == "node.rejoin"]
    REPORT["node_renewals"] = [
        {"old_serial": r["old_serial"], "serial": r["serial"], "lease_until": r["lease_until"]} for r in renewals
    ]
    REPORT["node_rejoins"] = [
        {k: r.get(k) for k in ("serial", "drain", "drain_seconds", "restart_seconds")} for r in rejoins
    ]
    # Two renewals (at least), each one chained to the one before, each followed by the node's rejoin.
    assert len(renewals) >= 2 and len(rejoins) >= 2, (renewals, rejoins)
    assert renewals[0]["old_serial"] == first_serial
    assert renewals[1]["old_serial"] == renewals[0]["serial"]
    assert [r["serial"] for r in rejoins[:2]] == [r["serial"] for r in renewals[:2]]
    now_serial = serial_hex(load_cert(worker.root / "pki" / "node.crt"))
    assert now_serial in [r["serial"] for r in renewals]
    # The job saw the worker under three Ray node ids: it rejoined twice and took work each time.
    result = json.loads(REPORT["job_result"].removeprefix("RESULT "))
    assert len(result["worker_node_ids"]) >= WANT_WORKER_IDS and len(result["per_ip"]) == 2

    # The head's Ray and the gateway never restarted; the same node agent did all of it.
    after = _run(mn)
    assert after["gateway_pid"] == gateway_pid and after["ray_pid"] == head_ray_pid
    assert serial_hex(load_cert(mn.head_state.node_cert)) == head_cert
    REPORT["gateway_pid"] = gateway_pid
    assert json.loads((worker.root / "node.json").read_text())["agent_pid"] == agent_pid

    # The gateway: new certificates for fresh connections, the kept connection untouched.
    rounds = [json.loads(x) for x in rounds_file.read_text().splitlines() if x.strip()]
    assert rounds and not [r for r in rounds if "kept_error" in r or "fresh_error" in r], rounds[-5:]
    assert {r["kept_status"] for r in rounds} == {200} == {r["fresh_status"] for r in rounds}
    assert len({r["kept_port"] for r in rounds}) == 1, "the kept-alive connection was reopened"
    assert len({r["kept_serial"] for r in rounds}) == 1
    fresh_serials = list(dict.fromkeys(r["fresh_serial"] for r in rounds))
    REPORT["gateway_serials"] = {"kept_connection": rounds[0]["kept_serial"], "fresh_connections": fresh_serials}
    assert len(fresh_serials) >= 3 and fresh_serials[0] == rounds[0]["kept_serial"]
    swaps = [r for r in records if r.get("kind") == "tls" and r.get("event") == "reload" and r.get("accepted")]
    issued = [r for r in records if r.get("event") == "gateway.cert.renew" and r.get("accepted")]
    # The supervisor issued each certificate once; its workers swapped them in, each on its own.
    workers = {p for r in records if r.get("kind") == "gateway" and r.get("event") == "start" for p in r["workers"]}
    workers |= {r["pid"] for r in records if r.get("kind") == "gateway" and r.get("event") == "worker_start"}
    REPORT["gateway_workers"] = sorted(workers)
    assert swaps and {r["pid"] for r in swaps} <= workers and gateway_pid not in workers
    assert {r["pid"] for r in issued} == {gateway_pid}
    assert len({r["old_serial"] for r in issued}) == len(issued), "one certificate was renewed twice"
    assert [r["serial"] for r in issued][: len(fresh_serials) - 1] == fresh_serials[1:]
    REPORT["test_seconds"] = round(time.monotonic() - started, 1)


def test_the_head_certificate_is_rotated_at_a_chosen_time_and_the_worker_rejoins(mn: Setup) -> None:
    started = time.monotonic()
    run = _run(mn)
    old_head = serial_hex(load_cert(mn.head_state.node_cert))
    # A running job is never ended without the operator saying so.
    long_job = mn.cli(
        "head", "job", "submit", "--no-wait", "--json", "--", "python", "-c", "import time; time.sleep(600)"
    )
    assert long_job.returncode == 0, long_job.stderr
    job_id = json.loads(long_job.stdout)["submission_id"]
    deadline = time.monotonic() + 120
    while _job_status(mn, job_id) == "PENDING" and time.monotonic() < deadline:
        time.sleep(2)
    refused = mn.head("cert", "rotate", "--head", check=False)
    assert refused.returncode == 1 and job_id in refused.stderr and "--force" in refused.stderr, refused.stderr
    assert serial_hex(load_cert(mn.head_state.node_cert)) == old_head
    mn.cli("head", "job", "stop", job_id, check=True, timeout=120)

    rotated = json.loads(mn.head("cert", "rotate", "--head", "--json").stdout)
    after = _run(mn)
    assert rotated["old_serial"] == old_head and rotated["serial"] == serial_hex(load_cert(mn.head_state.node_cert))
    assert rotated["ray_restarted"] is True and after["ray_pid"] == rotated["ray_pid"] != run["ray_pid"]
    assert after["gateway_pid"] == run["gateway_pid"] == rotated["gateway_pid"]
    assert after["ports"] == run["ports"]
    # The worker's Ray lost its head; its node agent starts it again, and it takes work from the new head.
    deadline = time.monotonic() + 240
    while True:
        result = mn.cli(
            "head", "job", "submit", "--working-dir", str(netns.REPO / "tests/multinode/app"), "--", "python",
            "pinned.py", timeout=240,
        )  # fmt: skip
        line = next((x for x in result.stdout.splitlines() if x.startswith("PINNED ")), "")
        found = json.loads(line[len("PINNED ") :]) if line else {}
        if len(found.get("nodes", {})) == 2 or time.monotonic() > deadline:
            break
        time.sleep(10)
    assert result.returncode == 0 and len(found["nodes"]) == 2, result.stdout + result.stderr
    assert sorted(found["nodes"].values()) == [netns.ROLES["head"], netns.ROLES["worker"]]
    assert sorted(found["ran_on"]) == sorted(found["nodes"])
    records = [r for r in mn.audit() if r.get("event") == "cert.rotate" and r.get("certificate") == "head"]
    assert records and records[-1]["serial"] == rotated["serial"] and records[-1]["gateway_pid"] == run["gateway_pid"]
    REPORT["head_rotation"] = {**rotated, "worker_back_seconds": round(time.monotonic() - started, 1)}

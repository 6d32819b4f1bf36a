"""Issue 6: a head and a worker in network namespaces joined by a bridge, probed from an attacker's namespace.

The tests share one network and cluster (Ray takes seconds to start) and run in file order: enroll, run a
job across both nodes, scan from the attacker, refuse what must be refused, leave, rejoin, revoke.
The attacker-visible port lists (stock Ray before, raywarden after) and the join times are printed and
written to $RAYWARDEN_MULTINODE_REPORT (default /tmp/raywarden-multinode-report.json).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raywarden.cluster.ray_head import ray_binary
from raywarden.identity.nodes import NodeRegistry
from raywarden.state import StateDir, runtime_dir_for
from tests.multinode import netns
from tests.multinode.support import GATEWAY_PORT, SERVE_PORT, Setup

pytestmark = pytest.mark.multinode

REPORT: dict[str, Any] = {}


def _skip_reason() -> str | None:
    return netns.unavailable()


def _stock_ray_scan(net: netns.Network, root: Path) -> dict[str, Any]:
    """`ray start --head` with default settings in the head namespace, scanned from the attacker."""
    home = root / "stock-home"
    home.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYWARDEN_"))}
    # HOME elsewhere: a ~/.ray/auth_token would switch token auth on; usage stats would call the internet.
    env.update({"HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"})
    log = root / "stock-ray.log"
    proc = net.popen(
        "head", [ray_binary(), "start", "--head", "--block", f"--temp-dir={root / 'stock'}"], env=env, log=log
    )
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        time.sleep(5)  # the agents bind a little after "started"
        ports = sorted(net.listening("head"))
        out = net.python(
            "attacker",
            "tests.multinode.probe",
            "scan",
            netns.ROLES["head"],
            *[str(p) for p in ports],
            check=True,
            timeout=120,
        ).stdout
        listening = net.listening("head")
        return {port: {"bound": listening.get(int(port), "?"), **r} for port, r in json.loads(out).items()}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        net.kill_all("head")


@pytest.fixture(scope="module")
def mn() -> Iterator[Setup]:
    reason = _skip_reason()
    if reason:
        pytest.skip(f"multinode tests: {reason}")
    root = Path(tempfile.mkdtemp(prefix="rwmn-"))
    net = netns.create()
    setup = Setup(net, root, StateDir(root / "head" / "state"))
    try:
        REPORT["before_stock_ray_head"] = _stock_ray_scan(net, root)
        init = setup.head("init", "--listen", f"0.0.0.0:{GATEWAY_PORT}", "--trust-domain", "mn.raywarden", "--json")
        setup.fingerprint = json.loads(init.stdout)["access_ca_fingerprint"]
        setup.head(
            "up",
            "--node-ip",
            netns.ROLES["head"],
            "--num-cpus",
            "1",
            "--serve-listen",
            f"0.0.0.0:{SERVE_PORT}",
            "--json",
        )
        setup.first_token = setup.token()
        result = setup.join("worker", setup.first_token, state="state", name="worker-1")
        assert result.returncode == 0, result.stdout + result.stderr
        REPORT["join"] = json.loads(result.stdout)
        yield setup
    finally:
        REPORT["join_wall_seconds"] = setup.join_seconds
        _write_report()
        for role, state in (("worker", "state"), ("head", "state")):
            folder = root / role / state
            if folder.exists():
                setup.cli(role, "down", "--state-dir", str(folder), "--force", timeout=120)
            shutil.rmtree(runtime_dir_for(folder, separated=True), ignore_errors=True)
        netns.destroy(net)
        shutil.rmtree(root, ignore_errors=True)


def _write_report() -> None:
    path = Path(os.environ.get("RAYWARDEN_MULTINODE_REPORT", "/tmp/raywarden-multinode-report.json"))
    path.write_text(json.dumps(REPORT, indent=2, sort_keys=True) + "\n")
    print(f"\nmultinode report ({path}):")
    for key in ("before_stock_ray_head", "after_raywarden_head", "after_raywarden_worker"):
        for port, r in sorted(REPORT.get(key, {}).items(), key=lambda kv: int(kv[0])):
            print(
                f"  {key:<24} {port:>6} bound {r['bound']:<12} plain: {r['plain']['result']:<28} "
                f"tls: {r['tls']['result']}"
            )
    print(f"  join seconds: {REPORT.get('join_wall_seconds')}")


def test_job_runs_tasks_pinned_to_each_node(mn: Setup) -> None:
    result = mn.cli(
        "head",
        "job",
        "submit",
        "--working-dir",
        str(netns.REPO / "tests/multinode/app"),
        "--",
        "python",
        "pinned.py",
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("PINNED "))
    found = json.loads(line[len("PINNED ") :])
    REPORT["pinned_job"] = found
    assert len(found["nodes"]) == 2
    assert sorted(found["ran_on"]) == sorted(found["nodes"])
    assert sorted(found["nodes"].values()) == [netns.ROLES["head"], netns.ROLES["worker"]]
    # On both nodes the tasks ran as Ray's own OS user, not as root (the control plane's).
    assert found["uids"] == [pwd.getpwnam("raywarden-ray").pw_uid] * 2


def test_the_workers_ray_runs_as_its_own_user_away_from_the_enrollment_material(mn: Setup) -> None:
    ray_user = pwd.getpwnam(REPORT["join"]["ray_user"])
    assert ray_user.pw_uid == REPORT["join"]["ray_uid"] != 0
    # Every process on the worker is Ray's, but one: the node agent, the control plane's (root), which holds the
    # node secret and renews the certificate (cluster/agent.py).
    agent = REPORT["join"]["agent_pid"]
    pids = [pid for pid in mn.net.pids("worker") if pid != agent]
    uids = {pid: _uid_of(pid) for pid in pids}
    assert pids and set(uids.values()) == {ray_user.pw_uid}, uids
    assert _uid_of(agent) == 0 and "raywarden.cluster.agent" in Path(f"/proc/{agent}/cmdline").read_text()
    worker_state = mn.root / "worker" / "state"
    # What Ray needs is in its own folder; the node secret, access CA and node.json stay in the state dir.
    ray_dir = runtime_dir_for(worker_state, separated=True) / "ray"
    assert sorted(p.name for p in ray_dir.iterdir() if p.is_file()) == [
        "internal-ca.crt",
        "node.crt",
        "node.key",
        "ray-token",
    ]
    # Ray's start log is root's, beside Ray's folder, never inside it (cluster/raydir.py).
    assert not (ray_dir / "ray-start.log").exists()
    assert ray_dir.stat().st_uid == ray_user.pw_uid and stat.S_IMODE(ray_dir.stat().st_mode) == 0o700
    secret_files = [
        worker_state / "keys" / "node-secret",
        worker_state / "node.json",
        worker_state / "agent.json",
        worker_state / "pki" / "node.key",
    ]
    script = (
        "import sys\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        open(p, 'rb')\n"
        "        print('OPENED', p)\n"
        "    except OSError:\n"
        "        print('DENIED', p)\n"
    )
    probe = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script, *map(str, secret_files), str(ray_dir / "ray-token")],
        user=ray_user.pw_uid,
        group=ray_user.pw_gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert probe == [*(f"DENIED {p}" for p in secret_files), f"OPENED {ray_dir / 'ray-token'}"]


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])
    raise AssertionError(f"no Uid line for {pid}")


SERVE_CONFIG = """\
applications:
- name: echo
  route_prefix: /echo
  import_path: raywarden.examples.serve_apps:echo
  deployments:
  - name: Echo
    num_replicas: 2
    max_replicas_per_node: 1
"""


WILDCARD = ("*", "0.0.0.0", "::")  # noqa: S104 - addresses as `ss` shows them


def _wildcard_ephemeral_listeners(mn: Setup, role: str) -> set[int]:
    low, high = (int(x) for x in mn.net.run(role, ["cat", "/proc/sys/net/ipv4/ip_local_port_range"]).stdout.split())
    return {
        port
        for port, addr in mn.net.listening(role).items()
        if addr in WILDCARD and low <= port <= high and port not in (GATEWAY_PORT, SERVE_PORT)
    }


def _probe(mn: Setup, source: str, target: str, ports: set[int]) -> dict[str, Any]:
    out = mn.net.python(
        source, "tests.multinode.probe", "scan", netns.ROLES[target], *map(str, sorted(ports)), check=True, timeout=120
    ).stdout
    return dict(json.loads(out))


def test_serve_replicas_on_both_nodes_answer_only_through_the_gateway(mn: Setup) -> None:
    """Each Serve replica opens a gRPC server on [::] at a port the kernel picks: no host but a cluster node
    reaches it, while the Serve listener (a port in that same range) answers everyone, with a 401."""
    before = {role: _wildcard_ephemeral_listeners(mn, role) for role in ("head", "worker")}
    config = mn.root / "serve.yaml"
    config.write_text(SERVE_CONFIG)
    mn.head("sa", "add", "mnbot", "--group", "app-users", "--create-group")
    mn.cli("head", "serve", "deploy", str(config), "--group", "app-users", "--json", check=True)
    key = mn.head("sa", "key", "create", "mnbot", "--app", "echo").stdout.strip()
    replicas: dict[str, set[int]] = {}
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        replicas = {role: _wildcard_ephemeral_listeners(mn, role) - before[role] for role in before}
        listed = json.loads(mn.cli("head", "serve", "list", "--json", check=True).stdout)
        if all(replicas.values()) and listed and listed[0]["status"] == "RUNNING":
            break
        time.sleep(2)
    REPORT["serve_replica_ports"] = {role: sorted(ports) for role, ports in replicas.items()}
    assert all(replicas.values()), f"no replica listener on each node: {replicas}"
    for role, ports in replicas.items():
        # From the attacker's host: nothing connects, in plaintext or TLS.
        for port, result in _probe(mn, "attacker", role, ports).items():
            assert result["plain"]["result"] == result["tls"]["result"] == "filtered", (role, port, result)
    # A cluster node still may (the replica's own mutual TLS then decides): the rule is not a blanket drop.
    from_worker = _probe(mn, "worker", "head", replicas["head"])
    assert all(r["plain"]["result"] != "filtered" for r in from_worker.values()), from_worker
    call = (
        "import requests, json\n"
        "out = []\n"
        "for key in (None, 'rwk_forged', {key!r}):\n"
        "    headers = {{'Authorization': 'Bearer ' + key}} if key else {{}}\n"
        "    r = requests.post('https://{host}:{port}/echo/hello', headers=headers, data=b'hi', verify=False,"
        " timeout=30)\n"
        "    out.append(r.status_code)\n"
        "print(json.dumps(out))\n"
    ).format(key=key, host=netns.ROLES["head"], port=SERVE_PORT)
    answers = mn.net.run("attacker", [sys.executable, "-W", "ignore", "-c", call], check=True).stdout
    assert json.loads(answers) == [401, 401, 200], answers
    calls = [
        r
        for r in mn.audit()
        if r.get("kind") == "request"
        and str(r.get("path", "")).startswith("/echo/")
        and r.get("source") == netns.ROLES["attacker"]
    ]
    assert [r["decision"] for r in calls] == ["deny", "deny", "allow"], calls
    assert [r.get("status") for r in calls[:2]] == [401, 401], calls


def test_attacker_gets_no_application_data_from_any_port(mn: Setup) -> None:
    head = mn.scan("head")
    worker = mn.scan("worker")
    REPORT["after_raywarden_head"] = head
    REPORT["after_raywarden_worker"] = worker
    assert len(head) >= 10 and len(worker) >= 6, (head, worker)
    leaks = []
    for role, results in (("head", head), ("worker", worker)):
        for port, r in results.items():
            if role == "head" and int(port) in (GATEWAY_PORT, SERVE_PORT):
                continue  # the gateway's listeners are the front door; checked below and in the Serve test
            if r["plain"]["data"] or r["tls"]["data"]:
                leaks.append((role, port, r))
    assert not leaks, leaks
    gateway = head[str(GATEWAY_PORT)]
    # The gateway speaks TLS only; without a client certificate it answers 401 to everything but enrollment.
    assert not gateway["plain"]["data"]
    assert gateway["tls"]["first_bytes"].startswith("HTTP/1.1 401"), gateway


def test_shadowray_request_to_the_gateway_is_refused(mn: Setup) -> None:
    marker = mn.root / "shadowray-was-here"
    script = (
        "import requests, json, sys\n"
        f"r = requests.post('https://{netns.ROLES['head']}:{GATEWAY_PORT}/api/jobs/', "
        f"json={{'entrypoint': 'touch {marker}'}}, verify=False, timeout=10)\n"
        "print(json.dumps({'status': r.status_code, 'body': r.text[:300]}))\n"
    )
    out = mn.net.run("attacker", [sys.executable, "-W", "ignore", "-c", script], check=True).stdout
    answer = json.loads(out)
    assert answer["status"] == 401, answer
    time.sleep(1)
    assert not marker.exists()
    denials = [
        r
        for r in mn.audit()
        if r.get("kind") == "request"
        and r.get("path") == "/api/jobs/"
        and r.get("decision") == "deny"
        and r.get("source") == netns.ROLES["attacker"]
    ]
    assert denials and denials[-1]["status"] == 401


def test_user_certificate_cannot_open_a_grpc_channel_to_the_gcs(mn: Setup) -> None:
    run = json.loads((mn.head_state.run_dir / "cluster.json").read_text())
    gcs = f"{netns.ROLES['head']}:{run['ports']['gcs']}"
    user_cert = str(mn.root / "head" / "home" / "profiles" / "mn.raywarden" / "client.crt")
    user_key = str(mn.root / "head" / "home" / "profiles" / "mn.raywarden" / "client.key")
    worker_pki = mn.root / "worker" / "state" / "pki"
    ca = mn.head_state.internal_ca_cert
    # Positive control: the enrolled node's certificate, from the node's own address, opens the channel.
    assert mn.grpc("worker", gcs, ca, str(worker_pki / "node.crt"), str(worker_pki / "node.key"))
    # An access-CA user certificate does not, even from an address the firewall admits ...
    assert not mn.grpc("worker", gcs, ca, user_cert, user_key)
    # ... nor from the attacker's host, nor without any certificate.
    assert not mn.grpc("attacker", gcs, ca, user_cert, user_key)
    assert not mn.grpc("attacker", gcs, ca)


def test_wrong_fingerprint_aborts_before_the_token_is_sent(mn: Setup) -> None:
    token = mn.token()
    before = len(mn.audit())
    result = mn.join("attacker", token, state="state-fp", name="evil", fingerprint="ab" * 32)
    assert result.returncode != 0 and "fingerprint" in result.stderr
    assert not any(r.get("event") == "node.join" for r in mn.audit()[before:])
    # The token was never sent, so it is still good: the attacker did not learn or spend it.
    token_id = token.split(".")[1]
    registry = NodeRegistry.open(mn.head_state.identity_db)
    with registry._connect() as db:
        assert db.execute("SELECT used_at FROM node_join_tokens WHERE token_id = ?", (token_id,)).fetchone() == (None,)


def test_replayed_join_token_is_refused(mn: Setup) -> None:
    # The token the worker joined with, presented again from the attacker's host.
    replay = mn.join("attacker", mn.first_token, state="state-b", name="attacker-2")
    assert replay.returncode != 0 and "refused (403)" in replay.stderr, replay.stderr
    assert not (mn.root / "attacker" / "state-b" / "node.json").exists()
    assert not (mn.root / "attacker" / "state-b" / "keys" / "ray-token").exists()
    assert NodeRegistry.open(mn.head_state.identity_db).get("attacker-2") is None
    refusal = [r for r in mn.audit() if r.get("event") == "node.join" and r.get("decision") == "deny"]
    assert refusal and "already used" in refusal[-1]["reason"]
    assert refusal[-1]["source"] == netns.ROLES["attacker"]
    assert "rwj." not in json.dumps(mn.audit()), "a join token reached the audit log"


def test_worker_down_leaves_cleanly_and_is_audited(mn: Setup) -> None:
    result = mn.cli("worker", "down", "--state-dir", str(mn.root / "worker" / "state"), "--json", check=True)
    assert json.loads(result.stdout)["head_acknowledged"] is True
    assert not mn.net.pids("worker"), "processes left in the worker namespace"
    assert "raywarden_" not in mn.net.run("worker", ["nft", "list", "tables"], check=True).stdout
    assert not (mn.root / "worker" / "state" / "keys" / "ray-token").exists()
    node = NodeRegistry.open(mn.head_state.identity_db).get("worker-1")
    assert node is not None and node.status == "left"
    leaves = [r for r in mn.audit() if r.get("kind") == "node" and r.get("event") == "node.leave"]
    assert leaves and leaves[-1]["node"] == "worker-1"


def test_revoked_node_is_refused(mn: Setup) -> None:
    # Rejoin after leaving is allowed (a new token), then the node is revoked.
    result = mn.join("worker", mn.token(), state="state", name="worker-1")
    assert result.returncode == 0, result.stdout + result.stderr
    run = json.loads((mn.head_state.run_dir / "cluster.json").read_text())
    gcs = f"{netns.ROLES['head']}:{run['ports']['gcs']}"
    pki = mn.root / "worker" / "state" / "pki"
    ca = mn.head_state.internal_ca_cert
    assert mn.grpc("worker", gcs, ca, str(pki / "node.crt"), str(pki / "node.key"))

    revoked = json.loads(mn.head("node", "revoke", "worker-1", "--json").stdout)
    assert revoked["firewall_updated"] is True
    # Its certificate no longer opens a channel to the head: not from its own address, not from elsewhere.
    assert not mn.grpc("worker", gcs, ca, str(pki / "node.crt"), str(pki / "node.key"))
    assert not mn.grpc("attacker", gcs, ca, str(pki / "node.crt"), str(pki / "node.key"))
    # It cannot rejoin: neither under its name (from its address), nor under a new name from that address.
    again = mn.join("worker", mn.token(), state="state-again", name="worker-1")
    assert again.returncode != 0 and "refused (403)" in again.stderr, again.stderr
    renamed = mn.join("worker", mn.token(), state="state-renamed", name="worker-9")
    assert renamed.returncode != 0 and "refused (403)" in renamed.stderr, renamed.stderr
    records = mn.audit()
    assert any(r.get("event") == "node.revoke" and r.get("decision") == "allow" for r in records)
    refusals = [r for r in records if r.get("event") == "node.join" and r.get("decision") == "deny"]
    assert "revoked" in refusals[-1]["reason"] and "revoked" in refusals[-2]["reason"]
    nodes = {n["name"]: n for n in json.loads(mn.head("node", "list", "--json").stdout)}
    assert nodes["worker-1"]["status"] == "revoked" and "worker-9" not in nodes

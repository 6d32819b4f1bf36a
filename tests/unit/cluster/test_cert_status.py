"""`cert status`, `cert rotate` and doctor's renewal checks on real state dirs made by `init` (no Ray):
every certificate listed with its next renewal, and warnings before trouble."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from raywarden.cli import main as cli_main
from raywarden.cluster import admission, runstate
from raywarden.cluster.certlife import Lifetime
from raywarden.cluster.nodestate import NodeState
from raywarden.cluster.ports import RayPorts
from raywarden.cluster.setup import init_state
from raywarden.config import ClusterConfig, Listen
from raywarden.doctor import run_doctor
from raywarden.files import write_private, write_public
from raywarden.identity.nodes import NodeRegistry
from raywarden.pki.certs import cert_pem, load_cert, serial_hex
from raywarden.pki.keys import generate_private_key, private_key_pem
from raywarden.pki.spiffe import SpiffeId
from raywarden.secret import Secret
from raywarden.state import StateDir
from tests.unit.cluster.conftest import joined_worker

pytestmark = pytest.mark.unit
TD = "status.test"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StateDir:
    monkeypatch.setenv("RAYWARDEN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RAYWARDEN_STATE_DIR", raising=False)
    target = StateDir(tmp_path / "state")
    init_state(
        target,
        ClusterConfig(trust_domain=TD, listen=Listen(host="127.0.0.1", port=18443)),
        admin_name="admin",
        profile_name="status",
    )
    return target


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["raywarden", *args])
    with pytest.raises(SystemExit) as exited:
        cli_main.main()
    out, err = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 0), out, err


def add_worker(state: StateDir, name: str, lifetime: dt.timedelta) -> x509.Certificate:
    config = state.load_config().model_copy(update={"node_cert_ttl": lifetime})
    cert = admission.issue_node_certificate(
        state, config, generate_private_key().public_key(), SpiffeId(TD, "node", name), "10.9.0.3"
    )
    NodeRegistry.open(state.identity_db).add_node(
        name=name,
        spiffe_id=str(SpiffeId(TD, "node", name)),
        address="10.9.0.3",
        serial=serial_hex(cert),
        not_after=cert.not_valid_after_utc,
        ports={},
        node_secret=Secret("s" * 20),
        token_id="t" * 16,
        cert_issued_at=Lifetime.of(cert).issued,
    )
    return cert


def pretend_running(state: StateDir) -> None:
    """A run file naming live processes (this test's own pid): what a running cluster looks like to doctor."""
    run = runstate.RunState(
        ray_pid=os.getpid(),
        gateway_pid=os.getpid(),
        ports=RayPorts.allocate(),
        listen=Listen(host="127.0.0.1", port=18443),
        started_at=dt.datetime.now(dt.timezone.utc).isoformat(),
        firewall="installed",
    )
    runstate.write_run_state(state, run)


def overdue_gateway(state: StateDir, minutes_left: int = 1) -> x509.Certificate:
    """A gateway certificate from the access CA, 10 minutes old with ``minutes_left`` to go."""
    ca_cert = load_cert(state.access_ca_cert)
    ca_key: Any = serialization.load_pem_private_key(state.access_ca_key.read_bytes(), password=None)
    current = load_cert(state.gateway_cert)
    key = generate_private_key()
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(current.subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=10))
        .not_valid_after(now + dt.timedelta(minutes=minutes_left))
    )
    for ext in current.extensions:
        if not isinstance(ext.value, x509.AuthorityKeyIdentifier):
            builder = builder.add_extension(ext.value, ext.critical)
    cert = builder.sign(ca_key, hashes.SHA256())
    write_private(state.gateway_key, private_key_pem(key))
    write_public(state.gateway_cert, cert_pem(cert))
    return cert


# -- cert status -------------------------------------------------------------------------------------------


def test_status_lists_every_certificate_of_a_head_with_its_renewal(
    state: StateDir, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    worker = add_worker(state, "w1", dt.timedelta(days=30))
    code, out, _ = run_main(monkeypatch, capsys, "cert", "status", "--state-dir", str(state.root), "--json")
    assert code == 0
    found = json.loads(out)
    assert found["ok"] is True and found["role"] == "head"
    rows = {(c["kind"], c["name"]): c for c in found["certificates"]}
    assert set(rows) == {
        ("access CA", "current"),
        ("internal CA", "current"),
        ("gateway", "gateway"),
        ("head node", "head"),
        ("worker node", "w1"),
    }
    gateway = load_cert(state.gateway_cert)
    assert rows["gateway", "gateway"]["serial"] == serial_hex(gateway)
    assert rows["gateway", "gateway"]["renew_at"] == Lifetime.of(gateway).renew_at().isoformat()
    assert rows["worker node", "w1"]["serial"] == serial_hex(worker)
    assert rows["worker node", "w1"]["renew_at"] == Lifetime.of(worker).renew_at().isoformat()
    assert (
        rows["head node", "head"]["renew_at"] is None and "cert rotate --head" in rows["head node", "head"]["renewal"]
    )
    assert all(c["health"] == "ok" for c in found["certificates"])
    # Human output: one line per certificate, the serials in full.
    code, out, _ = run_main(monkeypatch, capsys, "cert", "status", "--state-dir", str(state.root), "--wide")
    assert code == 0 and serial_hex(worker) in out and serial_hex(gateway) in out


def test_status_exits_1_for_an_expired_or_overdue_certificate(
    state: StateDir, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    add_worker(state, "gone", dt.timedelta(minutes=-1))
    overdue_gateway(state)
    code, out, _ = run_main(monkeypatch, capsys, "cert", "status", "--state-dir", str(state.root), "--json")
    rows = {c["name"]: c for c in json.loads(out)["certificates"]}
    assert code == 1 and rows["gone"]["health"] == "expired" and rows["gateway"]["health"] == "overdue"
    code, out, _ = run_main(monkeypatch, capsys, "cert", "status", "--state-dir", str(state.root))
    assert code == 1 and "expired" in out and "overdue" in out


def test_status_shows_every_ca_a_rotation_leaves_trusted(
    state: StateDir, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from raywarden.pki.ca_keys import CertificateAuthority

    successor = CertificateAuthority.create("internal", TD, years=1)
    state.internal_ca_bundle.write_bytes(state.internal_ca_cert.read_bytes() + cert_pem(successor.certificate))
    code, out, _ = run_main(monkeypatch, capsys, "cert", "status", "--state-dir", str(state.root), "--json")
    internal = [c for c in json.loads(out)["certificates"] if c["kind"] == "internal CA"]
    assert code == 0 and [c["name"] for c in internal] == ["current", "also trusted"]
    assert internal[1]["serial"] == serial_hex(successor.certificate)


def test_status_on_a_worker_lists_its_own_certificate_and_its_agent(
    tmp_path: Path, state: StateDir, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    node = NodeState(tmp_path / "worker")
    (node.root / "pki").mkdir(parents=True)
    cert = add_worker(state, "w1", dt.timedelta(minutes=3))
    write_public(node.node_cert, cert_pem(cert))
    write_public(node.internal_ca_cert, state.internal_ca_cert.read_bytes())
    write_public(node.access_ca_cert, state.access_ca_cert.read_bytes())
    node.save(joined_worker("w1", TD))
    code, out, err = run_main(monkeypatch, capsys, "cert", "status", "--state-dir", str(node.root), "--json")
    found = json.loads(out)
    assert code == 0 and found["role"] == "worker" and found["agent"] is None
    assert [c["kind"] for c in found["certificates"]] == ["worker node", "internal CA", "access CA"]
    assert found["certificates"][0]["serial"] == serial_hex(cert)
    code, out, err = run_main(monkeypatch, capsys, "cert", "status", "--state-dir", str(node.root))
    assert code == 0 and "no node agent status" in err


def test_status_of_a_folder_with_no_cluster_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_main(monkeypatch, capsys, "cert", "status", "--state-dir", str(tmp_path / "none"))
    assert code == 1 and "no raywarden cluster state" in err and "hint:" in err


# -- cert rotate --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "pass exactly one of --head and --gateway"),
        (("--head", "--gateway"), "pass exactly one of --head and --gateway"),
        (("--head", "--wait-jobs", "5"), "--wait-jobs: '5' is not a duration"),
    ],
)
def test_rotate_needs_one_certificate_and_a_duration(
    state: StateDir,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    message: str,
) -> None:
    before = state.node_cert.read_bytes(), state.gateway_cert.read_bytes()
    code, _, err = run_main(monkeypatch, capsys, "cert", "rotate", *args, "--state-dir", str(state.root))
    assert code == 2 and message in " ".join(err.split()) and "hint:" in err
    assert (state.node_cert.read_bytes(), state.gateway_cert.read_bytes()) == before


def test_rotating_the_head_certificate_of_a_stopped_cluster_only_reissues_it(
    state: StateDir, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old = load_cert(state.node_cert)
    code, out, _ = run_main(monkeypatch, capsys, "cert", "rotate", "--head", "--state-dir", str(state.root), "--json")
    result = json.loads(out)
    new = load_cert(state.node_cert)
    assert code == 0 and result["ray_restarted"] is False and result["jobs_ended"] == []
    assert result["old_serial"] == serial_hex(old) and result["serial"] == serial_hex(new) != serial_hex(old)
    assert Lifetime.of(new).total == dt.timedelta(days=365)
    records = [json.loads(x) for p in sorted(state.audit_dir.glob("audit-*.jsonl")) for x in p.read_text().splitlines()]
    assert records[-1]["event"] == "cert.rotate" and records[-1]["serial"] == serial_hex(new)


# -- doctor ------------------------------------------------------------------------------------------------


def test_doctor_warns_of_a_gateway_certificate_the_running_gateway_failed_to_renew(state: StateDir) -> None:
    overdue_gateway(state)
    assert run_doctor(state).get("certs.gateway").status == "pass"  # the gateway is down: it renews at start
    pretend_running(state)
    check = run_doctor(state).get("certs.gateway")
    assert check.status == "warn" and "past its renewal point" in check.message
    assert check.fix is not None and f"raywarden cert rotate --gateway --state-dir {state.root}" in check.fix


def test_doctor_warns_when_gateway_renewals_keep_failing(state: StateDir) -> None:
    status = {"accepted": False, "reason": "access CA key unreadable", "failures": 3, "pid": 1}
    state.run_dir.mkdir(exist_ok=True)
    state.gateway_renewal_status.write_text(json.dumps(status))
    check = run_doctor(state).get("certs.gateway")
    assert check.status == "warn" and "failed 3 times in a row: access CA key unreadable" in check.message


def test_doctor_warns_a_month_before_the_head_certificate_ends_and_fails_the_last_day(state: StateDir) -> None:
    not_after = load_cert(state.node_cert).not_valid_after_utc
    assert run_doctor(state, now=not_after - dt.timedelta(days=31)).get("certs.node").status == "pass"
    check = run_doctor(state, now=not_after - dt.timedelta(days=10)).get("certs.node")
    assert check.status == "warn" and "reads it only at start" in check.message
    assert check.fix is not None and "raywarden cert rotate --head --state-dir" in check.fix
    assert run_doctor(state, now=not_after - dt.timedelta(hours=2)).get("certs.node").status == "fail"


def test_doctor_judges_each_worker_nodes_renewal(state: StateDir) -> None:
    cert = add_worker(state, "w1", dt.timedelta(days=30))
    life = Lifetime.of(cert)
    assert run_doctor(state).get("certs.worker.w1").status == "pass"
    # Just past the renewal point: the agent is at it. A twelfth of the life later: it should be done.
    assert run_doctor(state, now=life.renew_at() + dt.timedelta(hours=1)).get("certs.worker.w1").status == "pass"
    late = run_doctor(state, now=life.renew_at() + dt.timedelta(days=3)).get("certs.worker.w1")
    assert late.status == "warn" and "past its renewal point" in late.message and "agent.log" in (late.fix or "")
    gone = run_doctor(state, now=life.not_after + dt.timedelta(minutes=1)).get("certs.worker.w1")
    assert gone.status == "fail" and "expired" in gone.message and "join again" in (gone.fix or "")
    registry = NodeRegistry.open(state.identity_db)
    registry.record_outcome("w1", ok=False, error="Ray did not register")
    assert run_doctor(state).get("certs.worker.w1").status == "pass"
    registry.record_outcome("w1", ok=False, error="Ray did not register")
    failing = run_doctor(state).get("certs.worker.w1")
    assert failing.status == "warn" and "failed 2 times in a row: Ray did not register" in failing.message
    registry.revoke("w1", revoked_by="test", reason="test")
    assert "certs.worker.w1" not in {c.id for c in run_doctor(state).checks}

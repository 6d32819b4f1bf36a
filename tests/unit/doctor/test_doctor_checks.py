"""doctor on a real state dir made by `init`: healthy passes; each broken property fails with its fix."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from raywarden.client.profile import load_profile
from raywarden.doctor import DoctorUnavailable, run_doctor
from raywarden.files import write_private, write_public
from raywarden.identity.store import IdentityStore
from raywarden.pki.ca_keys import CertificateAuthority
from raywarden.pki.certs import cert_pem, load_cert
from raywarden.pki.keys import generate_private_key, private_key_pem
from raywarden.pki.spiffe import SpiffeId
from raywarden.state import StateDir
from tests.unit.doctor.conftest import TD

pytestmark = pytest.mark.unit

CLUSTER_CHECKS = ("listeners.ray", "listeners.gateway", "ray.processes", "ray.version", "ray.auth", "ray.tls")


def _write_gateway_cert(state: StateDir, lifetime: dt.timedelta, *, ca: CertificateAuthority | None = None) -> None:
    authority = ca or CertificateAuthority.load("access", TD, state.access_ca_cert, state.access_ca_key)
    key = generate_private_key()
    cert = authority.issue(
        key.public_key(),
        SpiffeId(TD, "gateway"),
        lifetime=lifetime,
        server=True,
        client=False,
        dns_names=("localhost",),
        ip_addresses=("127.0.0.1",),
    )
    write_private(state.gateway_key, private_key_pem(key))
    write_public(state.gateway_cert, cert_pem(cert))


def test_a_healthy_state_dir_passes(state: StateDir) -> None:
    report = run_doctor(state)
    assert report.exit_code() == 0 and report.exit_code(strict=True) == 0
    assert not report.by_status("fail", "warn"), [c.message for c in report.by_status("fail", "warn")]
    assert not report.cluster_running
    for check_id in CLUSTER_CHECKS:
        assert report.get(check_id).status == "skip"
    assert report.get("ray.version").message == "skipped: cluster is down"
    for check_id in (
        "files.keys",
        "files.ray-token",
        "files.folders",
        "files.state",
        "files.owner",
        "files.profile.doc",
        "certs.access-ca",
        "certs.internal-ca",
        "certs.gateway",
        "certs.node",
        "certs.profile.doc",
        "policy.valid",
        "audit.verify",
        "clock.sanity",
    ):
        assert report.get(check_id).status == "pass", report.get(check_id)


def test_world_readable_key_fails_with_chmod_fix(state: StateDir) -> None:
    os.chmod(state.gateway_key, 0o644)
    report = run_doctor(state)
    check = report.get("files.keys")
    assert check.status == "fail" and str(state.gateway_key) in check.message and "0644" in check.message
    assert check.fix == f"chmod 600 {state.gateway_key}"
    assert report.exit_code() == 1
    assert report.get("certs.gateway").status == "pass"  # the key still matches its certificate

    os.system(check.fix)  # noqa: S605 - the printed fix, run as printed
    assert run_doctor(state).get("files.keys").status == "pass"


def test_loose_token_folder_and_state_files_fail(state: StateDir) -> None:
    os.chmod(state.ray_token, 0o640)
    os.chmod(state.pki_dir, 0o755)  # noqa: S103 - the misconfiguration under test
    os.chmod(state.identity_db, 0o644)
    os.chmod(state.access_ca_cert, 0o666)  # noqa: S103 - the misconfiguration under test
    report = run_doctor(state)
    assert report.get("files.ray-token").fix == f"chmod 600 {state.ray_token}"
    assert report.get("files.folders").fix == f"chmod 700 {state.pki_dir}"
    state_check = report.get("files.state")
    assert state_check.status == "fail"
    assert state_check.fix == f"chmod 600 {state.identity_db} && chmod 644 {state.access_ca_cert}"


def test_missing_key_fails(state: StateDir) -> None:
    state.node_key.unlink()
    report = run_doctor(state)
    assert report.get("files.keys").status == "fail" and "missing" in report.get("files.keys").message
    assert report.get("certs.node").status == "fail" and "has no key" in report.get("certs.node").message


def test_open_profile_key_fails(state: StateDir) -> None:
    profile = load_profile("doc")
    os.chmod(profile.key_path, 0o604)
    check = run_doctor(state).get("files.profile.doc")
    assert check.status == "fail" and check.fix == f"chmod 600 {profile.key_path}"


def _shares_os_user(state: StateDir, *, flag: bool = False) -> None:
    """What `up` records without root: Ray runs as the control plane's user."""
    state.save_config(state.load_config().model_copy(update={"ray_user": None, "shared_os_user": flag}))


def test_rays_world_writable_temp_dir_needs_a_private_folder_around_it(state: StateDir) -> None:
    _shares_os_user(state)
    temp = state.ray_temp_dir
    temp.mkdir(parents=True)
    try:
        os.chmod(temp, 0o777)  # noqa: S103 - what Ray does to its own temp dir
        for folder in (temp.parent, state.runtime_dir):
            os.chmod(folder, 0o755)  # noqa: S103 - the misconfiguration under test
        check = run_doctor(state).get("files.ray-temp")
        assert check.status == "fail" and check.fix == f"chmod 700 {state.runtime_dir}"
        os.chmod(state.runtime_dir, 0o700)
        assert run_doctor(state).get("files.ray-temp").status == "pass"
    finally:
        shutil.rmtree(state.runtime_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="Ray runs as a user of its own only when started as root")
def test_rays_folder_must_be_its_users_and_closed(state: StateDir) -> None:
    assert state.load_config().separated
    state.ray_temp_dir.mkdir(parents=True)  # root's and 0755: not Ray's own folder
    try:
        check = run_doctor(state).get("files.ray-temp")
        assert check.status == "fail" and check.fix is not None and check.fix.startswith("chown raywarden-ray:")
    finally:
        shutil.rmtree(state.runtime_dir)


def test_shared_os_user_with_more_than_one_principal_fails(state: StateDir) -> None:
    _shares_os_user(state, flag=True)
    report = run_doctor(state)
    assert report.get("separation.mode").status == "pass"
    assert report.get("separation.reach").status == "skip"
    IdentityStore.open(state.identity_db).add_principal(SpiffeId(TD, "user", "bob"), [], created_by="test")
    check = run_doctor(state).get("separation.mode")
    assert check.status == "fail" and "any job can read its keys" in check.message
    assert "2 active principals" in check.message and "--shared-os-user" in check.message
    assert check.fix is not None and "as root" in check.fix and "user disable" in check.fix
    IdentityStore.open(state.identity_db).set_disabled(str(SpiffeId(TD, "user", "bob")), True)
    assert run_doctor(state).get("separation.mode").status == "pass"


def test_expired_gateway_certificate_fails_and_rotate_fixes_it(state: StateDir) -> None:
    _write_gateway_cert(state, dt.timedelta(minutes=-1))
    report = run_doctor(state)
    check = report.get("certs.gateway")
    assert check.status == "fail" and "expired" in check.message
    assert check.fix == f"raywarden cert rotate --gateway --state-dir {state.root}"
    assert report.exit_code() == 1

    records_before = _audit_records(state)
    fixed = subprocess.run(
        [sys.executable, "-m", "raywarden.cli.main", *check.fix.split()[1:], "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    serial = json.loads(fixed.stdout)["serial"]
    after = run_doctor(state)
    assert after.get("certs.gateway").status == "pass" and after.get("audit.verify").status == "pass"
    new = _audit_records(state)[len(records_before) :]
    assert [r["event"] for r in new] == ["gateway.cert.renew"] and new[0]["serial"] == serial


def test_certificate_close_to_expiry_warns_and_strict_fails(state: StateDir) -> None:
    # The head's certificate is renewed only when the head's Ray restarts: a month ahead is when to plan that.
    internal = CertificateAuthority.load("internal", TD, state.internal_ca_cert, state.internal_ca_key)
    key = generate_private_key()
    cert = internal.issue(
        key.public_key(), SpiffeId(TD, "node", "head"), lifetime=dt.timedelta(days=3), server=True, client=True
    )
    write_private(state.node_key, private_key_pem(key))
    write_public(state.node_cert, cert_pem(cert))
    report = run_doctor(state)
    assert report.get("certs.node").status == "warn"
    assert report.exit_code() == 0 and report.exit_code(strict=True) == 1
    # A gateway certificate with days left is routine: the gateway renews it at 2/3 of its life.
    _write_gateway_cert(state, dt.timedelta(days=3))
    assert run_doctor(state).get("certs.gateway").status == "pass"


def test_gateway_certificate_from_a_foreign_ca_fails(state: StateDir) -> None:
    foreign = CertificateAuthority.create("access", TD, years=1)
    _write_gateway_cert(state, dt.timedelta(days=30), ca=foreign)
    check = run_doctor(state).get("certs.gateway")
    assert check.status == "fail" and "not issued by this cluster's CA" in check.message


def test_expired_ca_fails_and_expiring_ca_warns(state: StateDir) -> None:
    not_after = load_cert(state.internal_ca_cert).not_valid_after_utc
    report = run_doctor(state, now=not_after + dt.timedelta(hours=1))
    assert report.get("certs.internal-ca").status == "fail" and "expired" in report.get("certs.internal-ca").message
    report = run_doctor(state, now=not_after - dt.timedelta(days=10))
    assert report.get("certs.internal-ca").status == "warn"


def test_expired_admin_client_certificate_only_warns(state: StateDir) -> None:
    profile = load_profile("doc")
    not_after = profile.certificate().not_valid_after_utc
    check = run_doctor(state, now=not_after + dt.timedelta(minutes=1)).get("certs.profile.doc")
    assert check.status == "warn" and check.fix == "raywarden job list --profile doc"


def test_invalid_policy_fails(state: StateDir) -> None:
    (state.policy_dir / "broken.cedar").write_text("permit(principal, action, resource")
    report = run_doctor(state)
    check = report.get("policy.valid")
    assert check.status == "fail" and "broken.cedar" in check.message
    assert report.get("policy.loaded").status == "skip"


def test_tampered_audit_log_fails(state: StateDir) -> None:
    segment = sorted(state.audit_dir.glob("audit-*.jsonl"))[0]
    lines = segment.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"admins", b"nobody")
    segment.write_bytes(b"\n".join(lines))
    check = run_doctor(state).get("audit.verify")
    assert check.status == "fail" and "does not verify" in check.message
    assert "raywarden audit verify" in (check.fix or "")


def test_clock_before_the_ca_or_behind_the_log_fails(state: StateDir) -> None:
    not_before = load_cert(state.access_ca_cert).not_valid_before_utc
    check = run_doctor(state, now=not_before - dt.timedelta(days=1)).get("clock.sanity")
    assert check.status == "fail" and "before the access CA" in check.message
    last = json.loads(sorted(state.audit_dir.glob("audit-*.jsonl"))[-1].read_text().splitlines()[-1])["time"]
    last_time = dt.datetime.fromisoformat(last.replace("Z", "+00:00"))
    check = run_doctor(state, now=last_time - dt.timedelta(hours=2)).get("clock.sanity")
    assert check.status == "fail" and "behind the newest audit record" in check.message
    assert run_doctor(state, now=last_time - dt.timedelta(minutes=1)).get("clock.sanity").status == "pass"


def test_no_state_dir_means_doctor_cannot_run(tmp_path: Path) -> None:
    with pytest.raises(DoctorUnavailable) as info:
        run_doctor(StateDir(tmp_path / "nothing"))
    assert info.value.exit_code == 2 and "no raywarden cluster state" in info.value.message


def _audit_records(state: StateDir) -> list[dict[str, object]]:
    return [
        json.loads(line)
        for p in sorted(state.audit_dir.glob("audit-*.jsonl"))
        for line in p.read_text().splitlines()
        if line
    ]

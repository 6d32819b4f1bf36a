"""Renewal as people and CI runners meet it, against a real gateway: the CLI renews at half life, once for
commands started together; a renewable service account's expired certificate renews within its grace by proof
of possession; a copied key is caught; and when renewal is impossible the error says why and what to do."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from raywarden.identity.renewal import RenewalStore
from raywarden.identity.store import IdentityStore
from raywarden.pki import ca_keys
from raywarden.pki.ca_keys import CertificateAuthority
from raywarden.pki.certs import cert_pem, serial_hex
from raywarden.pki.keys import generate_private_key, private_key_pem
from raywarden.pki.spiffe import SpiffeId
from tests.support import TD, Cluster, run_cli

pytestmark = pytest.mark.integration


class Runner:
    """A machine with its own $RAYWARDEN_HOME and no state dir: a CI runner, or a laptop."""

    def __init__(self, cluster: Cluster, home: Path) -> None:
        self.cluster = cluster
        self.home = home

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYWARDEN_"))}
        env["RAYWARDEN_HOME"] = str(self.home)
        env["RAYWARDEN_STATE_DIR"] = str(self.home / "no-cluster-here")
        return env

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "raywarden.cli.main", *args],
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "raywarden.cli.main", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def profile_dir(self) -> Path:
        [folder] = [p for p in (self.home / "profiles").iterdir() if p.is_dir()]
        return folder

    def serial(self) -> str:
        return serial_hex(x509.load_pem_x509_certificate((self.profile_dir() / "client.crt").read_bytes()))


def login(cluster: Cluster, home: Path, kind: str, name: str) -> Runner:
    added: dict[str, Any] = json.loads(
        run_cli(cluster, kind, "add", name, "--group", "developers", "--json", check=True).stdout
    )
    runner = Runner(cluster, home)
    done = runner.run("login", cluster.url, "--code", added["code"], "--ca-fingerprint", added["ca_fingerprint"])
    assert done.returncode == 0, done.stderr
    return runner


@contextmanager
def clock(moment: dt.datetime) -> Iterator[None]:
    original = ca_keys._now
    ca_keys._now = lambda: moment
    try:
        yield
    finally:
        ca_keys._now = original


def age(runner: Runner, *, issued_ago: dt.timedelta, lifetime: dt.timedelta) -> str:
    """Replace the runner's certificate by one as old as time would have made it (same identity, recorded)."""
    cluster = runner.cluster
    folder = runner.profile_dir()
    identity = json.loads((folder / "profile.json").read_text())["identity"]
    access = CertificateAuthority.load("access", TD, cluster.state.access_ca_cert, cluster.state.access_ca_key)
    key = generate_private_key()
    with clock(dt.datetime.now(dt.timezone.utc) - issued_ago):
        cert = access.issue(key.public_key(), SpiffeId.parse(identity), lifetime=lifetime)
    IdentityStore.open(cluster.state.identity_db).record_certificate(
        serial_hex(cert), identity, cert.not_valid_after_utc, issuer=access.fingerprint
    )
    (folder / "client.key").write_bytes(private_key_pem(key))
    (folder / "client.crt").write_bytes(cert_pem(cert))
    (folder / "token.json").unlink(missing_ok=True)
    return serial_hex(cert)


def events(cluster: Cluster, event: str, principal: str) -> list[dict[str, Any]]:
    return [r for r in cluster.audit_records() if r.get("event") == event and r.get("principal") == principal]


def test_the_cli_renews_once_half_the_life_has_passed(cluster: Cluster, tmp_path: Path) -> None:
    runner = login(cluster, tmp_path / "laptop", "user", "half-life")
    fresh = runner.serial()
    assert runner.run("token").returncode == 0
    assert runner.serial() == fresh, "a fresh certificate is not renewed"
    old = age(runner, issued_ago=dt.timedelta(hours=7), lifetime=dt.timedelta(hours=12))  # 7 of 12 hours gone
    done = runner.run("token")
    assert done.returncode == 0, done.stderr
    assert runner.serial() != old
    [renewal] = [
        r for r in events(cluster, "cert.renew", f"spiffe://{TD}/user/half-life") if r["previous_serial"] == old
    ]
    assert renewal["serial"] == runner.serial()


def test_commands_started_together_renew_once(cluster: Cluster, tmp_path: Path) -> None:
    runner = login(cluster, tmp_path / "ci", "sa", "parallel-bot")
    old = age(runner, issued_ago=dt.timedelta(hours=9), lifetime=dt.timedelta(hours=12))
    started = [runner.start("token") for _ in range(4)]
    for command in started:
        _, err = command.communicate(timeout=300)
        assert command.returncode == 0, err
    renewals = [
        r for r in events(cluster, "cert.renew", f"spiffe://{TD}/sa/parallel-bot") if r["previous_serial"] == old
    ]
    assert len(renewals) == 1, renewals
    assert runner.serial() == renewals[0]["serial"]


def test_a_ci_runner_idle_over_the_weekend_keeps_working(cluster: Cluster, tmp_path: Path) -> None:
    runner = login(cluster, tmp_path / "runner", "sa", "weekend-bot")
    assert run_cli(cluster, "sa", "renewal", "weekend-bot", "--grace", "7d").returncode == 0
    expired = age(runner, issued_ago=dt.timedelta(days=2, hours=12), lifetime=dt.timedelta(hours=12))
    done = runner.run("token")
    assert done.returncode == 0, done.stderr
    assert runner.serial() != expired
    [record] = events(cluster, "cert.renew_expired", f"spiffe://{TD}/sa/weekend-bot")
    assert record["previous_serial"] == expired and record["serial"] == runner.serial()
    renewed = RenewalStore(IdentityStore.open(cluster.state.identity_db)).certificate(expired)
    assert renewed is not None and renewed.superseded_by == runner.serial()
    assert (runner.profile_dir() / "client.key").stat().st_mode & 0o077 == 0


def test_a_copied_key_is_caught_and_both_copies_stop(cluster: Cluster, tmp_path: Path) -> None:
    runner = login(cluster, tmp_path / "runner", "sa", "copied-bot")
    assert run_cli(cluster, "sa", "renewal", "copied-bot", "--grace", "3d").returncode == 0
    age(runner, issued_ago=dt.timedelta(days=1), lifetime=dt.timedelta(hours=12))
    thief = Runner(cluster, tmp_path / "thief")
    shutil.copytree(runner.home, thief.home)
    assert runner.run("token").returncode == 0
    stolen = thief.run("token")
    assert stolen.returncode == 1
    assert "renewed already" in stolen.stderr and "revoked" in stolen.stderr and "sa code copied-bot" in stolen.stderr
    assert "Traceback" not in stolen.stderr
    after = runner.run("token")
    assert after.returncode != 0, "the owner's renewed certificate is revoked too"
    [alert] = [r for r in cluster.audit_records() if r.get("event") == "cert.reuse" and "copied-bot" in r["principal"]]
    assert alert["alert"] is True


def test_a_persons_renewal_whose_answer_was_lost_keeps_working_and_says_how_to_go_on(
    cluster: Cluster, tmp_path: Path
) -> None:
    owner = login(cluster, tmp_path / "laptop", "user", "lost-answer")
    old = age(owner, issued_ago=dt.timedelta(hours=7), lifetime=dt.timedelta(hours=12))
    before = Runner(cluster, tmp_path / "before")  # the profile as it was when the answer was lost
    shutil.copytree(owner.home, before.home)
    assert owner.run("token").returncode == 0 and owner.serial() != old
    stale = before.run("token")
    assert stale.returncode == 0, "the old certificate is still valid: the command goes on with it"
    assert "renewed already" in stale.stderr and "raywarden login" in stale.stderr
    assert f"revoke cert {old}" in stale.stderr and "Traceback" not in stale.stderr
    # The administrator ends the old certificate and what it was renewed into with one command.
    revoked = json.loads(run_cli(cluster, "revoke", "cert", old, "--json", check=True).stdout)
    assert revoked["revoked_serials"] == [old, owner.serial()]
    assert owner.run("token").returncode != 0


@pytest.mark.parametrize(
    ("kind", "name", "grace", "expired_ago", "says", "hint"),
    [
        (
            "sa",
            "plain-bot",
            None,
            dt.timedelta(hours=1),
            "not renewable after they expire",
            "sa renewal plain-bot --grace",
        ),
        ("sa", "late-bot", "2d", dt.timedelta(days=3), "expired 3 days ago", "raywarden sa code late-bot"),
        (
            "user",
            "sleepy",
            None,
            dt.timedelta(hours=2),
            "cannot be renewed once it has expired",
            "raywarden user code sleepy",
        ),
    ],
)
def test_when_renewal_is_impossible_the_error_says_why_and_what_to_do(
    cluster: Cluster,
    tmp_path: Path,
    kind: str,
    name: str,
    grace: str | None,
    expired_ago: dt.timedelta,
    says: str,
    hint: str,
) -> None:
    runner = login(cluster, tmp_path / name, kind, name)
    if grace is not None:
        assert run_cli(cluster, "sa", "renewal", name, "--grace", grace).returncode == 0
    age(runner, issued_ago=expired_ago + dt.timedelta(hours=12), lifetime=dt.timedelta(hours=12))
    done = runner.run("job", "list")
    assert done.returncode == 1, done.stdout + done.stderr
    assert says in done.stderr and hint in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_sa_renewal_command(cluster: Cluster) -> None:
    assert run_cli(cluster, "sa", "add", "setting-bot", "--group", "developers").returncode == 0
    shown = run_cli(cluster, "sa", "renewal", "setting-bot", "--json")
    assert json.loads(shown.stdout) == {"name": "setting-bot", "renew_grace_s": None}
    assert "within 7 days" in run_cli(cluster, "sa", "renewal", "setting-bot", "--grace", "7d").stdout
    assert "within 7 days" in run_cli(cluster, "sa", "show", "setting-bot").stdout
    for bad in (("--grace", "31d"), ("--grace", "soon"), ("--grace", "7d", "--off")):
        refused = run_cli(cluster, "sa", "renewal", "setting-bot", *bad)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr and "error" in refused.stderr
    assert "off" in run_cli(cluster, "sa", "renewal", "setting-bot", "--off").stdout
    assert run_cli(cluster, "user", "renewal", "admin").returncode == 2, "people have no renewal after expiry"

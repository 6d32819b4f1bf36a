"""Two people on one machine (one $RAYWARDEN_HOME): a login never replaces the other's profile, every
command says who acts, `whoami` and `logout` tell the truth, and the printed `Next:` command runs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from raywarden.identity.store import IdentityStore
from tests.support import TD, Cluster, run_cli

pytestmark = pytest.mark.integration


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "token.json"):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


class Machine:
    """One machine: one RAYWARDEN_HOME shared by whoever sits at it; the cluster's state dir is here too."""

    def __init__(self, cluster: Cluster, home: Path, *, state_here: bool = True) -> None:
        self.cluster = cluster
        self.home = home
        self.state_here = state_here

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYWARDEN_"))}
        env["RAYWARDEN_HOME"] = str(self.home)
        env["RAYWARDEN_STATE_DIR"] = str(self.cluster.state.root if self.state_here else self.home / "nothing")
        env.update(extra)
        return env

    def run(self, *args: str, check: bool = False, **extra: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "raywarden.cli.main", *args],
            env=self.env(**extra),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"raywarden {' '.join(args)}: {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result


def _add(cluster: Cluster, kind: str, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        run_cli(cluster, kind, "add", name, "--group", "developers", "--json", check=True).stdout
    )
    return data


@pytest.fixture
def machine(cluster: Cluster, tmp_path: Path) -> Machine:
    """The head host, where `init` left the admin's profile under its default name (the trust domain)."""
    home = tmp_path / "shared-home"
    (home / "profiles").mkdir(parents=True)
    shutil.copytree(cluster.profile_dir, home / "profiles" / TD)
    meta = json.loads((home / "profiles" / TD / "profile.json").read_text())
    meta["name"] = TD
    (home / "profiles" / TD / "profile.json").write_text(json.dumps(meta))
    (home / "current-profile").write_text(TD + "\n")
    return Machine(cluster, home)


def test_a_second_login_on_the_machine_keeps_the_first_profile(machine: Machine, cluster: Cluster) -> None:
    admin_before = _digest(machine.home / "profiles" / TD)
    added = _add(cluster, "user", "alice2p")
    login = machine.run("login", cluster.url, "--code", added["code"], "--ca-fingerprint", added["ca_fingerprint"])
    assert login.returncode == 0, login.stderr
    alice_profile = f"{TD}-alice2p"
    assert f"profile '{alice_profile}', now current" in login.stdout
    assert f"profile '{TD}' (spiffe://{TD}/user/admin) is unchanged" in login.stdout
    assert _digest(machine.home / "profiles" / TD) == admin_before

    # The `Next:` line runs as printed, in a shell, as alice.
    next_line = login.stdout.splitlines()[login.stdout.splitlines().index("Next:") + 1].strip()
    ran = subprocess.run(["/bin/sh", "-c", next_line], env=machine.env(), capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert "'CPU'" in ran.stdout and f"as spiffe://{TD}/user/alice2p" in ran.stderr

    # Each command says who acts; --profile picks the other person.
    mine = json.loads(machine.run("job", "submit", "--json", "--", "true", check=True).stdout)["submission_id"]
    theirs = json.loads(machine.run("job", "submit", "--json", "--profile", TD, "--", "true", check=True).stdout)
    owners = {j["submission_id"]: j["metadata"].get("raywarden.owner") for j in cluster.ray_jobs()}
    assert owners[mine] == f"spiffe://{TD}/user/alice2p"
    assert owners[theirs["submission_id"]] == f"spiffe://{TD}/user/admin"

    # whoami: identity, groups (the store is on this machine), expiry, gateway, accepted.
    me = json.loads(machine.run("whoami", "--json", check=True).stdout)
    assert me["identity"] == f"spiffe://{TD}/user/alice2p" and me["groups"] == ["developers"]
    assert me["gateway_url"] == cluster.url and me["gateway_check"] == "accepted" and me["current"]
    admin = json.loads(machine.run("whoami", "--profile", TD, "--json", check=True).stdout)
    assert admin["groups"] == ["admins"] and not admin["current"]

    listed = {r["name"]: r for r in json.loads(machine.run("profile", "list", "--json", check=True).stdout)}
    assert set(listed) == {TD, alice_profile} and listed[alice_profile]["current"]


def test_an_explicit_name_in_use_is_refused_before_the_code_is_spent(machine: Machine, cluster: Cluster) -> None:
    added = _add(cluster, "user", "bob2p")
    args = ("login", cluster.url, "--code", added["code"], "--ca-fingerprint", added["ca_fingerprint"])
    refused = machine.run(*args, "--profile", TD)
    assert refused.returncode == 1 and "already holds" in refused.stderr and "--force" in refused.stderr
    store = IdentityStore.open(cluster.state.identity_db)
    assert store.enrollments_of(f"spiffe://{TD}/user/bob2p")[0]["used_at"] is None
    # The same code still works under another name.
    ok = machine.run(*args, "--profile", "bob")
    assert ok.returncode == 0, ok.stderr
    assert json.loads((machine.home / "profiles" / TD / "profile.json").read_text())["identity"].endswith("/admin")


def test_logout_on_the_head_revokes_and_the_gateway_refuses(machine: Machine, cluster: Cluster) -> None:
    added = _add(cluster, "user", "carol2p")
    machine.run("login", cluster.url, "--code", added["code"], "--ca-fingerprint", added["ca_fingerprint"], check=True)
    folder = machine.home / "profiles" / f"{TD}-carol2p"
    cert = (str(folder / "client.crt"), str(folder / "client.key"))
    kept = machine.home / "kept"
    kept.mkdir()
    shutil.copy(cert[0], kept / "c.crt")
    shutil.copy(cert[1], kept / "c.key")
    out = machine.run("logout", "--json", check=True)
    done = json.loads(out.stdout)
    assert done["revoked"] is True and done["was_current"] is True and not folder.exists()
    # Even a copy of the key is useless now.
    resp = requests.get(
        cluster.url + "/api/jobs/", cert=(str(kept / "c.crt"), str(kept / "c.key")), verify=cluster.ca, timeout=30
    )
    assert resp.status_code == 401
    # Nobody is current any more: commands say so rather than acting as someone else.
    who = machine.run("whoami")
    assert who.returncode == 1 and "no profile selected" in who.stderr and TD in who.stderr


def test_whoami_and_logout_elsewhere_go_through_the_gateway(cluster: Cluster, tmp_path: Path) -> None:
    """A laptop without the cluster's state: the gateway says who the profile is, and revokes it at logout."""
    laptop = Machine(cluster, tmp_path / "laptop", state_here=False)
    added = _add(cluster, "user", "dan2p")
    laptop.run("login", cluster.url, "--code", added["code"], "--ca-fingerprint", added["ca_fingerprint"], check=True)
    laptop.run("job", "list", check=True)  # job commands cache a bearer token: logout revokes it too
    me = json.loads(laptop.run("whoami", "--json", check=True).stdout)
    folder = laptop.home / "profiles" / me["profile"]
    cert = (str(folder / "client.crt"), str(folder / "client.key"))
    token = json.loads((folder / "token.json").read_text())
    assert me["gateway_check"] == "accepted" and me["groups"] == ["developers"]  # the gateway's view
    view = me["gateway_view"]
    assert view["identity"] == f"spiffe://{TD}/user/dan2p" and view["auth_method"] == "certificate"
    assert view["credential_id"] == me["certificate_serial"] and view["credential_seconds_left"] > 0
    kept = (Path(shutil.copy(cert[0], tmp_path / "c.crt")), Path(shutil.copy(cert[1], tmp_path / "c.key")))
    done = json.loads(laptop.run("logout", "--json", check=True).stdout)
    assert done["revoked"] is True and done["revoked_by"] == "gateway" and not folder.exists()
    store = IdentityStore.open(cluster.state.identity_db)
    assert store.certificate_owner(me["certificate_serial"]) == (f"spiffe://{TD}/user/dan2p", True)
    assert store.token_owner(token["jti"]) == (f"spiffe://{TD}/user/dan2p", True)
    resp = requests.get(cluster.url + "/api/jobs/", cert=(str(kept[0]), str(kept[1])), verify=cluster.ca, timeout=30)
    assert resp.status_code == 401 and "revoked" in resp.json()["reason"]


def test_logout_when_the_gateway_is_unreachable_says_until_when_the_certificate_works(
    cluster: Cluster, tmp_path: Path
) -> None:
    laptop = Machine(cluster, tmp_path / "laptop", state_here=False)
    added = _add(cluster, "user", "dan3p")
    laptop.run("login", cluster.url, "--code", added["code"], "--ca-fingerprint", added["ca_fingerprint"], check=True)
    me = json.loads(laptop.run("whoami", "--json", "--offline", check=True).stdout)
    profile, serial = laptop.home / "profiles" / me["profile"] / "profile.json", me["certificate_serial"]
    meta = json.loads(profile.read_text())
    profile.write_text(json.dumps({**meta, "gateway_url": "https://127.0.0.1:9"}))  # nothing listens there
    out = laptop.run("logout", check=True)
    flat = " ".join(out.stdout.split())
    assert "unreachable" in flat and "still accepts certificate" in flat and f"raywarden revoke cert {serial}" in flat
    owner = IdentityStore.open(cluster.state.identity_db).certificate_owner(serial)
    assert owner == (f"spiffe://{TD}/user/dan3p", False)


def test_rename_and_use(machine: Machine, cluster: Cluster) -> None:
    renamed = machine.run("profile", "rename", TD, "head-admin", check=True)
    assert "Renamed profile" in renamed.stdout
    me = json.loads(machine.run("whoami", "--json", "--offline", check=True).stdout)
    assert me["profile"] == "head-admin" and me["current"]
    assert machine.run("profile", "use", "nope").returncode == 1


def test_a_service_account_uses_stock_ray_with_its_token(machine: Machine, cluster: Cluster) -> None:
    _add(cluster, "sa", "ci-2p")
    token = run_cli(cluster, "sa", "token", "ci-2p", "--ttl", "10m", check=True).stdout.strip()
    ray = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    result = subprocess.run(
        [
            ray,
            "job",
            "submit",
            "--address",
            cluster.url,
            "--verify",
            cluster.ca,
            "--headers",
            json.dumps({"Authorization": f"Bearer {token}"}),
            "--",
            "python",
            "-c",
            "print('from ci')",
        ],
        env={k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYWARDEN_"))},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "from ci" in result.stdout
    owners = [j["metadata"].get("raywarden.owner") for j in cluster.ray_jobs()]
    assert f"spiffe://{TD}/sa/ci-2p" in owners

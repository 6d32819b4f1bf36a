"""Profiles on one machine, offline: names a login takes, rename, delete, logout, whoami."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from raywarden.cli import main as cli_main
from raywarden.client.enroll import choose_profile_name
from raywarden.client.profile import (
    Profile,
    current_profile_name,
    load_profile,
    load_profile_or_none,
    profiles_dir,
    set_current,
)
from raywarden.cluster.setup import init_state
from raywarden.config import ClusterConfig, Listen
from raywarden.errors import ConfigError, RaywardenError
from raywarden.identity.store import IdentityStore
from raywarden.pki.certs import serial_hex
from raywarden.pki.spiffe import SpiffeId
from raywarden.state import StateDir

pytestmark = pytest.mark.unit

TD = "team.example"
GW = "https://127.0.0.1:18443"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StateDir:
    monkeypatch.setenv("RAYWARDEN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAYWARDEN_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("RAYWARDEN_PROFILE", raising=False)
    target = StateDir(tmp_path / "state")
    init_state(
        target,
        ClusterConfig(trust_domain=TD, listen=Listen(host="127.0.0.1", port=18443)),
        admin_name="admin",
        profile_name=TD,
    )
    return target


def _copy_profile(source: str, name: str, identity: str, gateway: str = GW) -> Profile:
    """A second profile on this machine (the files of another; only the metadata matters here)."""
    shutil.copytree(profiles_dir() / source, profiles_dir() / name)
    profile = Profile(name, gateway, identity, None)
    profile.write_meta()
    return profile


def _cli(*args: str) -> tuple[int, str, BaseException | None]:
    cli_main._register()
    result = CliRunner().invoke(cli_main.app, list(args))
    return result.exit_code, result.stdout, result.exception


def alice() -> SpiffeId:
    return SpiffeId(TD, "user", "alice")


def test_a_second_person_gets_another_name(state: StateDir) -> None:
    name, replaced, kept = choose_profile_name(None, TD, alice(), GW, force=False)
    assert name == f"{TD}-alice" and replaced is None
    assert kept is not None and kept.identity == f"spiffe://{TD}/user/admin"


def test_a_service_account_name_says_so(state: StateDir) -> None:
    name, _, _ = choose_profile_name(None, TD, SpiffeId(TD, "sa", "ci-bot"), GW, force=False)
    assert name == f"{TD}-sa-ci-bot"


def test_the_same_identity_replaces_its_own_profile(state: StateDir) -> None:
    name, replaced, kept = choose_profile_name(None, TD, SpiffeId(TD, "user", "admin"), GW, force=False)
    assert name == TD and replaced is not None and kept is None


def test_the_same_identity_at_another_gateway_is_someone_else(state: StateDir) -> None:
    name, replaced, _ = choose_profile_name(None, TD, SpiffeId(TD, "user", "admin"), "https://other:8443", force=False)
    assert name == f"{TD}-admin" and replaced is None


def test_an_explicit_name_held_by_someone_else_is_refused(state: StateDir) -> None:
    with pytest.raises(ConfigError) as info:
        choose_profile_name(TD, TD, alice(), GW, force=False)
    assert "already holds" in info.value.message and "--force" in (info.value.hint or "")
    name, replaced, _ = choose_profile_name(TD, TD, alice(), GW, force=True)
    assert name == TD and replaced is not None


def test_both_names_taken_is_refused(state: StateDir) -> None:
    _copy_profile(TD, f"{TD}-alice", f"spiffe://{TD}/user/mallory")
    with pytest.raises(ConfigError) as info:
        choose_profile_name(None, TD, alice(), GW, force=False)
    assert f"{TD}-alice" in info.value.message and "--profile NAME" in (info.value.hint or "")


def test_rename_keeps_the_current_profile(state: StateDir) -> None:
    code, out, exc = _cli("profile", "rename", TD, "admin-here", "--json")
    assert code == 0, exc
    assert json.loads(out) == {"old": TD, "new": "admin-here", "identity": f"spiffe://{TD}/user/admin"}
    assert current_profile_name() == "admin-here" and load_profile_or_none(TD) is None
    assert load_profile().name == "admin-here"


def test_rename_refuses_a_taken_or_bad_name(state: StateDir) -> None:
    _copy_profile(TD, "alice", f"spiffe://{TD}/user/alice")
    code, _, exc = _cli("profile", "rename", TD, "alice")
    assert code != 0 and isinstance(exc, ConfigError) and "already exists" in exc.message
    code, _, exc = _cli("profile", "rename", TD, "../escape")
    assert code != 0 and isinstance(exc, RaywardenError)
    assert load_profile(TD).identity == f"spiffe://{TD}/user/admin"


def test_list_marks_the_current_one_and_shows_damaged_ones(state: StateDir) -> None:
    _copy_profile(TD, "alice", f"spiffe://{TD}/user/alice")
    (profiles_dir() / "broken").mkdir()
    (profiles_dir() / "broken" / "profile.json").write_text("{not json")
    code, out, exc = _cli("profile", "list", "--json")
    assert code == 0, exc
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows[TD]["current"] and not rows["alice"]["current"]
    assert rows["broken"]["identity"] is None and "damaged" in rows["broken"]["problem"]
    code, out, _ = _cli("profile", "delete", "broken")
    assert code == 0 and not (profiles_dir() / "broken").exists()


def test_logout_of_a_local_profile_revokes_its_certificate(state: StateDir) -> None:
    profile = load_profile(TD)
    serial = serial_hex(profile.certificate())
    code, out, exc = _cli("logout", "--json")
    assert code == 0, exc
    done = json.loads(out)
    assert done["revoked"] is True and done["was_current"] is True and done["certificate_serial"] == serial
    assert not profile.folder.exists() and current_profile_name() is None
    owner = IdentityStore.open(state.identity_db).certificate_owner(serial)
    assert owner == (f"spiffe://{TD}/user/admin", True)
    code, _, exc = _cli("whoami")
    assert code != 0 and isinstance(exc, ConfigError) and "no profile selected" in exc.message


def test_logout_elsewhere_says_the_certificate_stays_valid(state: StateDir, tmp_path: Path) -> None:
    profile = load_profile(TD)
    serial = serial_hex(profile.certificate())
    # The same profile seen from a machine without the cluster's state.
    (tmp_path / "state").rename(tmp_path / "elsewhere")
    profile.write_meta()
    Profile(TD, GW, profile.identity, None).write_meta()
    code, out, exc = _cli("logout", "--profile", TD)
    assert code == 0, exc
    flat = " ".join(out.split())
    assert f"raywarden revoke cert {serial}" in flat and "still accepts" in flat


def test_whoami_offline_shows_identity_groups_and_expiry(state: StateDir) -> None:
    code, out, exc = _cli("whoami", "--offline", "--json")
    assert code == 0, exc
    me = json.loads(out)
    assert me["identity"] == f"spiffe://{TD}/user/admin" and me["groups"] == ["admins"]
    assert me["current"] and me["gateway_url"] == GW and me["certificate_seconds_left"] > 3600
    assert me["gateway_check"] == "not checked"
    code, out, _ = _cli("whoami", "--offline")
    assert "admins" in out and "valid until" in out and GW in out


def test_no_current_profile_names_the_ones_there_are(state: StateDir) -> None:
    _copy_profile(TD, "alice", f"spiffe://{TD}/user/alice")
    (Path(profiles_dir()).parent / "current-profile").unlink()
    with pytest.raises(ConfigError) as info:
        load_profile()
    assert "alice" in (info.value.hint or "") and "profile use" in (info.value.hint or "")
    set_current("alice")
    assert load_profile().identity == f"spiffe://{TD}/user/alice"

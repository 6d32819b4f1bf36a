"""Without root, Ray shares the control plane's OS user: such a cluster admits its one admin only, unless its
operator accepted the loss with --shared-os-user. The rules are checked on a real state dir without Ray; the
processes' own uid is what tells root from not, so the last tests run the CLI as a real unprivileged user."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from raywarden.cluster import privsep, rayuser
from raywarden.cluster.setup import init_state
from raywarden.config import ClusterConfig, Listen
from raywarden.errors import ClusterError, ConfigError, UsageError
from raywarden.identity.admin import IdentityAdmin
from raywarden.state import StateDir

pytestmark = pytest.mark.unit
TD = "privsep.test"


def _init(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **config: object) -> StateDir:
    monkeypatch.setenv("RAYWARDEN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RAYWARDEN_PROFILE", raising=False)
    state = StateDir(tmp_path / "state")
    init_state(
        state,
        ClusterConfig(trust_domain=TD, listen=Listen(host="127.0.0.1", port=1), **config),  # type: ignore[arg-type]
        admin_name="admin",
        profile_name="privsep",
    )
    return state


def _unseparated(state: StateDir, *, shared: bool = False) -> None:
    """What `up` records without root: Ray runs as the control plane's user."""
    config = state.load_config().model_copy(update={"ray_user": None, "shared_os_user": shared})
    state.save_config(config)


def test_root_init_plans_a_ray_user_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _init(tmp_path, monkeypatch)
    config = state.load_config()
    if os.geteuid() == 0:
        assert config.ray_user == rayuser.DEFAULT_RAY_USER and config.separated and config.admits_principals
        assert state.ray_temp_dir.parts[:4] == ("/", "var", "lib", "raywarden")
    else:
        assert config.ray_user is None and not config.admits_principals
    # Ray's unix sockets must fit below its temp dir whatever the state dir's path.
    assert len(str(state.ray_temp_dir)) + 64 <= 107


def test_second_principal_refused_without_separation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _init(tmp_path, monkeypatch)
    _unseparated(state)
    admin = IdentityAdmin(state)
    for attempt in (
        lambda: admin.add("user", "bob", ["developers"]),
        lambda: admin.add("sa", "ci-bot", []),
    ):
        with pytest.raises(UsageError) as refused:
            attempt()
        assert "any job could read the control plane's keys" in refused.value.message
        assert "--shared-os-user" in (refused.value.hint or "") and "as root" in (refused.value.hint or "")
    assert [p.name for p in admin.store.list_principals()] == ["admin"]
    # The one admin may still be enrolled (a new enrollment code for a new machine).
    assert admin.new_code("user", "admin").code.code_id


def test_shared_os_user_admits_more_principals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _init(tmp_path, monkeypatch)
    _unseparated(state, shared=True)
    admin = IdentityAdmin(state)
    admin.add("user", "bob", ["developers"])
    admin.add("sa", "ci-bot", [])
    assert sorted(p.name for p in admin.store.list_principals()) == ["admin", "bob", "ci-bot"]


def test_enrolling_or_enabling_another_principal_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Principals added while Ray ran as its own user; then the cluster is started without root.
    state = _init(tmp_path, monkeypatch, ray_user="someone")
    admin = IdentityAdmin(state)
    admin.add("user", "bob", [])
    admin.add("sa", "bot", [])
    admin.disable("user", "bob")
    _unseparated(state)
    admin = IdentityAdmin(state)
    with pytest.raises(UsageError, match="refused to enroll"):
        admin.new_code("sa", "bot")
    with pytest.raises(UsageError, match="refused to enable"):
        admin.enable("user", "bob")
    with pytest.raises(UsageError, match="refused to issue a token"):
        admin.sa_token("bot", 60)
    # `up` without root refuses such a cluster, before anything starts, unless the operator accepts it.
    monkeypatch.setattr(privsep, "can_switch_users", lambda: False)
    with pytest.raises(ConfigError, match="it has 2 active principals"):
        privsep.choose_ray_user(state, state.load_config(), ray_user=None, shared_os_user=False)
    config, user = privsep.choose_ray_user(state, state.load_config(), ray_user=None, shared_os_user=True)
    assert config.shared_os_user and user.is_current and state.load_config().shared_os_user


def test_oidc_auto_registration_counts_as_more_principals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _init(tmp_path, monkeypatch)
    _unseparated(state)
    issuer = {"issuer": "https://idp.example", "audience": "rw", "jwks_url": "https://idp.example/jwks"}
    (state.root / "oidc.json").write_text(json.dumps({"issuers": [issuer]}))
    monkeypatch.setattr(privsep, "can_switch_users", lambda: False)
    with pytest.raises(ConfigError, match="allow_unregistered"):
        privsep.choose_ray_user(state, state.load_config(), ray_user=None, shared_os_user=False)
    with pytest.raises(UsageError, match="allow_unregistered"):
        IdentityAdmin(state).new_code("user", "admin")
    (state.root / "oidc.json").write_text(json.dumps({"issuers": [{**issuer, "allow_unregistered": False}]}))
    assert privsep.principal_problem(state) is None


def test_flags_that_need_or_refuse_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _init(tmp_path, monkeypatch)
    monkeypatch.setattr(privsep, "can_switch_users", lambda: False)
    with pytest.raises(UsageError, match="--ray-user needs root"):
        privsep.choose_ray_user(state, state.load_config(), ray_user="ray", shared_os_user=False)
    monkeypatch.setattr(privsep, "can_switch_users", lambda: True)
    with pytest.raises(UsageError, match="--shared-os-user is for clusters started without root"):
        privsep.choose_ray_user(state, state.load_config(), ray_user=None, shared_os_user=True)


def test_ray_user_must_not_be_the_control_planes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    me = pwd.getpwuid(os.geteuid()).pw_name
    with pytest.raises(UsageError, match="control plane's own user"):
        rayuser.ensure_ray_user(me)
    with pytest.raises(Exception, match="no OS user 'rw-no-such-user-x'"):
        rayuser.ensure_ray_user("rw-no-such-user-x")


# -- the CLI as a real unprivileged user --------------------------------------------------------------------


@pytest.fixture
def unprivileged() -> Iterator[tuple[Path, pwd.struct_passwd]]:
    if os.geteuid() != 0:
        pytest.skip("needs root to run the CLI as another user")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no `nobody` user here")
    folder = Path(tempfile.mkdtemp(prefix="rwpriv-"))
    os.chmod(folder, 0o711)  # noqa: S103 - the unprivileged user must pass through to its home
    home = folder / "home"
    home.mkdir()
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    try:
        yield home, nobody
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _cli_as(user: pwd.struct_passwd, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "RAYWARDEN_HOME": str(home / "rw")}
    env["RAYWARDEN_STATE_DIR"] = str(home / "rw" / "cluster")
    return subprocess.run(
        [sys.executable, "-m", "raywarden.cli.main", *args],
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_without_root_admits_one_admin(unprivileged: tuple[Path, pwd.struct_passwd]) -> None:
    home, nobody = unprivileged
    made = _cli_as(nobody, home, "init", "--json")
    if made.returncode != 0 and "cannot" in made.stderr and "import" in made.stderr:
        pytest.skip(f"nobody cannot run this interpreter: {made.stderr[-200:]}")
    assert made.returncode == 0, made.stderr
    config = json.loads((home / "rw" / "cluster" / "config.json").read_text())
    assert config["ray_user"] is None and config["shared_os_user"] is False
    refused = _cli_as(nobody, home, "user", "add", "bob", "--group", "developers")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "any job could read the control plane's keys" in refused.stderr and "Traceback" not in refused.stderr
    assert "--shared-os-user" in refused.stderr
    assert _cli_as(nobody, home, "sa", "add", "ci-bot").returncode == 2
    listed = _cli_as(nobody, home, "user", "list", "--json")
    assert [p["name"] for p in json.loads(listed.stdout)] == ["admin"]
    up = _cli_as(nobody, home, "up", "--ray-user", "daemon")
    assert up.returncode == 2 and "--ray-user needs root" in up.stderr


def test_an_interpreter_rays_user_cannot_run_stops_up_before_anything() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run as Ray's user")
    user = rayuser.ensure_ray_user(rayuser.DEFAULT_RAY_USER)
    rayuser.check_interpreter(user)  # this checkout's venv: CI gives its folders o+x
    home = Path(tempfile.mkdtemp(prefix="rwhome-"))  # 0700, like a venv under a private home
    try:
        (home / "python").symlink_to(sys.executable)
        with pytest.raises(ClusterError) as refused:
            rayuser.check_interpreter(user, str(home / "python"))
    finally:
        shutil.rmtree(home)
    assert f"{home} is closed to it" in refused.value.message
    assert "chmod o+x" in (refused.value.hint or "") and "nothing was started" in (refused.value.hint or "")

"""Inputs that used to do nothing silently: unknown groups, unreachable join addresses, `down` over running
jobs, an --address that is not the profile's gateway, principals typed short."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from raywarden.cli import main as cli_main
from raywarden.cli.nodes import join_url
from raywarden.cli.principals import resolve_principal
from raywarden.cli.running_jobs import RunningJob
from raywarden.client.bearer import bearer_token, cached_token_id
from raywarden.client.jobs import choose_profile
from raywarden.client.profile import Profile, load_profile, profiles_dir
from raywarden.cluster.runstate import RunState
from raywarden.cluster.setup import init_state
from raywarden.config import ClusterConfig, Listen
from raywarden.errors import ClusterError, UsageError
from raywarden.identity.admin import IdentityAdmin
from raywarden.state import StateDir

pytestmark = pytest.mark.unit

TD = "inputs.example"


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
        profile_name="admin",
    )
    return target


def _cli(*args: str) -> tuple[int, str, BaseException | None]:
    cli_main._register()
    result = CliRunner().invoke(cli_main.app, list(args))
    return result.exit_code, result.stdout, result.exception


# -- groups -----------------------------------------------------------------------------------------------


def test_an_unknown_group_is_refused_with_the_close_ones(state: StateDir) -> None:
    _code, _, exc = _cli("user", "add", "alice", "--group", "developer")
    assert isinstance(exc, UsageError) and exc.exit_code == 2
    assert "unknown group 'developer'" in exc.message
    assert "did you mean 'developers'" in (exc.hint or "") and "--create-group" in (exc.hint or "")
    admin = IdentityAdmin(state)
    assert admin.store.get(f"spiffe://{TD}/user/alice") is None  # nothing half-written
    assert not [r for r in _audit(state) if r.get("principal") == f"spiffe://{TD}/user/alice"]


def test_create_group_starts_a_new_group_and_says_it_grants_nothing(state: StateDir) -> None:
    result = CliRunner().invoke(cli_main.app, ["sa", "add", "ci-bot", "--group", "ml-team", "--create-group"])
    assert result.exit_code == 0, result.exception
    assert "no policy names group 'ml-team'" in " ".join(result.stderr.split())
    assert "ml-team" in IdentityAdmin(state).known_groups()
    # once someone is in it, it is a known group
    code, _, exc = _cli("user", "add", "bob", "--group", "ml-team")
    assert code == 0, exc


def test_groups_change_checks_both_directions(state: StateDir) -> None:
    assert _cli("user", "add", "carol", "--group", "viewers")[0] == 0
    code, _, exc = _cli("user", "groups", "carol", "--add", "admin")
    assert isinstance(exc, UsageError) and "did you mean 'admins'" in (exc.hint or "")
    code, _, exc = _cli("user", "groups", "carol", "--remove", "developers")
    assert isinstance(exc, UsageError) and "not in group" in exc.message
    code, out, exc = _cli("user", "groups", "carol", "--add", "developers", "--remove", "viewers", "--json")
    assert code == 0 and json.loads(out)["groups"] == ["developers"]


def test_groups_named_by_an_operator_policy_are_known(state: StateDir) -> None:
    (state.policy_dir / "gpu.cedar").write_text(
        'permit (principal in Raywarden::Group::"gpu-users", action, resource) when { false };\n'
    )
    assert _cli("user", "add", "dave", "--group", "gpu-users")[0] == 0


def _audit(state: StateDir) -> list[dict[str, object]]:
    return [
        json.loads(line)
        for path in sorted(state.audit_dir.glob("audit-*.jsonl"))
        for line in path.read_text().splitlines()
        if line.strip()
    ]


# -- join address -----------------------------------------------------------------------------------------


def _run(node_ip: str | None, listen: str) -> RunState:
    return RunState.model_construct(
        ray_pid=1, gateway_pid=2, listen=Listen.parse(listen), node_ip=node_ip, started_at="", firewall=""
    )


def test_join_url_only_for_a_reachable_head() -> None:
    config = ClusterConfig(trust_domain=TD, listen=Listen(host="127.0.0.1", port=8443))
    url, why = join_url(config, None)
    assert url is None and "not running" in why and "--node-ip" in why
    url, why = join_url(config, _run(None, "127.0.0.1:8443"))
    assert url is None and "single-node" in why and "--listen 0.0.0.0:8443 --node-ip ADDR" in why
    url, why = join_url(config, _run("10.0.0.5", "127.0.0.1:8443"))
    assert url is None and "other hosts cannot reach" in why
    assert join_url(config, _run("10.0.0.5", "0.0.0.0:8443")) == ("https://10.0.0.5:8443", "")
    assert join_url(config, _run("10.0.0.5", "192.168.7.2:9443")) == ("https://192.168.7.2:9443", "")


def test_token_create_on_a_loopback_head_prints_no_join_command(state: StateDir) -> None:
    result = CliRunner().invoke(cli_main.app, ["node", "token", "create", "--json"])
    assert result.exit_code == 0, result.exception
    data = json.loads(result.stdout)
    assert data["join_command"] is None and data["head_url"] is None
    assert "not running" in data["no_join_command_because"]
    result = CliRunner().invoke(cli_main.app, ["node", "token", "create"])
    assert "raywarden join" not in result.stdout and "No join command" in result.stderr


# -- down -------------------------------------------------------------------------------------------------


def test_down_refuses_over_running_jobs_without_a_terminal(state: StateDir, monkeypatch: pytest.MonkeyPatch) -> None:
    from raywarden.cli import cluster as cluster_cli
    from raywarden.cli import running_jobs

    jobs = [RunningJob("raysubmit_AAAA1111", "RUNNING", f"spiffe://{TD}/user/alice", "python train.py")]
    monkeypatch.setattr(running_jobs, "running_jobs", lambda _state: jobs)
    stopped: list[StateDir] = []
    monkeypatch.setattr(cluster_cli.lifecycle, "down", lambda target, progress: stopped.append(target) or {})
    result = CliRunner().invoke(cli_main.app, ["down"])
    assert isinstance(result.exception, ClusterError) and not stopped
    assert "raysubmit_AAAA1111" in result.stderr and "user/alice" in result.stderr
    assert "--force" in (result.exception.hint or "") and "raywarden job stop raysubmit_AAAA1111" in (
        result.exception.hint or ""
    )


def test_down_asks_at_a_terminal_and_force_skips_the_question(state: StateDir, monkeypatch: pytest.MonkeyPatch) -> None:
    from raywarden.cli import cluster as cluster_cli
    from raywarden.cli import running_jobs

    jobs = [RunningJob("raysubmit_BBBB2222", "PENDING", "unknown owner", "sleep 600")]
    monkeypatch.setattr(running_jobs, "running_jobs", lambda _state: jobs)
    stopped: list[StateDir] = []
    monkeypatch.setattr(
        cluster_cli.lifecycle, "down", lambda target, progress: stopped.append(target) or {"stopped": True}
    )
    monkeypatch.setattr(cluster_cli, "can_ask", lambda: True)
    result = CliRunner().invoke(cli_main.app, ["down"], input="n\n")
    assert result.exit_code == 1 and not stopped and "Nothing stopped" in result.stderr
    result = CliRunner().invoke(cli_main.app, ["down", "--json"], input="y\n")
    answer = result.stdout[result.stdout.index("{") :]  # CliRunner echoes the typed answer to stdout
    assert result.exit_code == 0 and json.loads(answer)["jobs_killed"] == ["raysubmit_BBBB2222"]
    result = CliRunner().invoke(cli_main.app, ["down", "--force"])
    assert result.exit_code == 0 and len(stopped) == 2


# -- --address and bearer tokens ----------------------------------------------------------------------------


def test_address_picks_the_profile_for_that_gateway(state: StateDir) -> None:
    admin = load_profile("admin")
    assert choose_profile(None, "https://127.0.0.1:18443/").name == "admin"
    with pytest.raises(UsageError) as info:
        choose_profile("admin", "https://other.example:8443")
    assert "is not the gateway of profile 'admin'" in info.value.message
    with pytest.raises(UsageError):
        choose_profile(None, "https://other.example:8443")
    import shutil

    shutil.copytree(admin.folder, profiles_dir() / "second")
    Profile("second", admin.gateway_url, f"spiffe://{TD}/user/bob", None).write_meta()
    assert choose_profile(None, admin.gateway_url).name == "admin"  # the current one wins


def test_a_cached_token_is_reused_until_close_to_expiry(state: StateDir, monkeypatch: pytest.MonkeyPatch) -> None:
    from raywarden.client import bearer

    issued: list[int] = []

    def fake_request(profile: Profile, ttl: float | None) -> dict[str, str]:
        issued.append(1)
        expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=15 if len(issued) == 1 else 3)
        return {"token": f"t{len(issued)}", "jti": f"j{len(issued)}", "expires_at": expires.isoformat()}

    monkeypatch.setattr(bearer, "request_token", fake_request)
    profile = load_profile("admin")
    assert bearer_token(profile).reveal() == "t1" and bearer_token(profile).reveal() == "t1"
    assert (profile.token_cache_path.stat().st_mode & 0o777) == 0o600 and cached_token_id(profile) == "j1"
    assert bearer_token(profile, fresh=True).reveal() == "t2"
    assert bearer_token(profile).reveal() == "t3"  # t2 had under five minutes left
    assert len(issued) == 3


# -- principals ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alice", "spiffe://td.example/user/alice"),
        ("user:alice", "spiffe://td.example/user/alice"),
        ("sa:ci-bot", "spiffe://td.example/sa/ci-bot"),
        ("node:worker-1", "spiffe://td.example/node/worker-1"),
        ("gateway", "spiffe://td.example/gateway"),
        ("spiffe://other.example/user/bob", "spiffe://other.example/user/bob"),
    ],
)
def test_principals_accept_short_names(text: str, expected: str) -> None:
    assert resolve_principal(text, "td.example") == expected


@pytest.mark.parametrize("text", ["Alice", "group:devs", "sa:", "spiffe://td/user/a/b", "a b", "spiffe://td/user/x#y"])
def test_bad_principals_say_how_to_write_one(text: str) -> None:
    with pytest.raises(UsageError) as info:
        resolve_principal(text, "td.example")
    assert "sa:NAME" in (info.value.hint or "") and "spiffe://" in (info.value.hint or "")

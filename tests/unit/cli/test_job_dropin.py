"""`raywarden job` against Ray's own `ray job` definition: same subcommands and options, same parsing."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click
import pytest
import typer.main
from ray.dashboard.modules.job.cli import job_cli_group

from raywarden.cli import job_inputs
from raywarden.cli import main as cli_main
from raywarden.client.answers import refusal
from raywarden.client.jobs import from_ray_text
from raywarden.errors import UsageError

pytestmark = pytest.mark.unit


def _ours() -> click.Group:
    cli_main._register()
    root = typer.main.get_command(cli_main.app)
    group = root.commands["job"]  # type: ignore[attr-defined]
    assert isinstance(group, click.Group) or hasattr(group, "commands")
    return group  # type: ignore[return-value]


def _options(cmd: click.Command) -> set[str]:
    options = [p for p in cmd.params if getattr(p, "param_type_name", "") == "option"]
    return {o for p in options for o in (*p.opts, *p.secondary_opts)}


def test_same_subcommands_as_ray_job() -> None:
    assert set(_ours().commands) == set(job_cli_group.commands)


@pytest.mark.parametrize("name", sorted(job_cli_group.commands))
def test_every_ray_job_option_is_accepted(name: str) -> None:
    stock = _options(job_cli_group.commands[name])
    ours = _options(_ours().commands[name])
    assert stock - ours == set(), f"`raywarden job {name}` lacks {sorted(stock - ours)}"


@pytest.mark.parametrize(
    "words",
    [
        ["python", "-c", "print('hello')"],
        ["python", "train.py", "--epochs", "3", "--name", "a b"],
        ["sh", "-c", 'echo "$HOME" && ls | wc -l'],
        ["echo", "#not-a-comment", "$(id)", "`id`", ";", "&&"],
        ["python", "-c", "import sys; print(sys.argv)", "é", "\\", "'", '"'],
    ],
)
def test_entrypoint_is_quoted_as_ray_quotes_it(words: list[str]) -> None:
    command = job_inputs.entrypoint_command(words)
    assert command == shlex.join(words)  # what `ray job submit` does on POSIX
    assert shlex.split(command) == words  # the shell sees exactly the words typed after --


def test_no_entrypoint_is_a_usage_error() -> None:
    with pytest.raises(UsageError) as info:
        job_inputs.entrypoint_command([])
    assert info.value.exit_code == 2 and "--" in (info.value.hint or "")


def test_runtime_env_from_yaml_json_and_working_dir(tmp_path: Path) -> None:
    yaml_file = tmp_path / "env.yaml"
    yaml_file.write_text("pip:\n  - requests\nenv_vars:\n  A: '1'\nworking_dir: old\n")
    env, replaced = job_inputs.runtime_env(yaml_file, None, str(tmp_path))
    assert env == {"pip": ["requests"], "env_vars": {"A": "1"}, "working_dir": str(tmp_path)} and replaced
    env, replaced = job_inputs.runtime_env(None, '{"pip": ["numpy"]}', None)
    assert env == {"pip": ["numpy"]} and not replaced
    env, _ = job_inputs.runtime_env(None, None, "s3://bucket/code.zip")
    assert env == {"working_dir": "s3://bucket/code.zip"}


@pytest.mark.parametrize(
    ("yaml_text", "json_text", "working_dir", "words"),
    [
        ("pip: [a]", '{"pip": []}', None, "only one of"),
        (None, "{not json", None, "not valid JSON"),
        (None, "[1, 2]", None, "must be a JSON object"),
        ("- a\n- b\n", None, None, "must hold a mapping"),
        ("pip: [a\n", None, None, "not valid YAML"),
        (None, None, "no/such/folder", "no such folder"),
    ],
)
def test_bad_runtime_env_is_a_usage_error(
    tmp_path: Path, yaml_text: str | None, json_text: str | None, working_dir: str | None, words: str
) -> None:
    yaml_file = None
    if yaml_text is not None:
        yaml_file = tmp_path / "env.yaml"
        yaml_file.write_text(yaml_text)
    with pytest.raises(UsageError) as info:
        job_inputs.runtime_env(yaml_file, json_text, working_dir)
    assert words in info.value.message


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_amounts_are_finite_and_not_negative(value: float) -> None:
    with pytest.raises(UsageError):
        job_inputs.amount(value, "--entrypoint-num-cpus")
    job_inputs.amount(0.5, "--entrypoint-num-cpus")
    job_inputs.amount(None, "--entrypoint-memory")


def test_metadata_and_resources() -> None:
    assert job_inputs.metadata('{"team": "vision"}') == {"team": "vision"}
    assert job_inputs.metadata(None) is None
    with pytest.raises(UsageError):
        job_inputs.metadata('{"run": 7}')
    assert job_inputs.resources('{"tpu": 1}', "--entrypoint-resources") == {"tpu": 1}
    with pytest.raises(UsageError):
        job_inputs.resources('"tpu"', "--entrypoint-resources")


GATEWAY_403 = {
    "error": "forbidden",
    "request_id": "0f3c9a",
    "hint": "ask an administrator for access",
}


def test_ray_403_text_becomes_the_gateway_answer() -> None:
    # What Ray's client raises for a 403 (dashboard_sdk.py + http_token_authentication.py).
    text = (
        f"Authentication failed: {json.dumps(GATEWAY_403)}\n\nToken authentication is enabled but the "
        "authentication token is invalid or incorrect.. Note: RAY_AUTH_MODE is currently 'disabled'"
    )
    error = from_ray_text(text, 403)
    assert error.status == 403
    assert "forbidden" in error.message and "request id: 0f3c9a" in error.message
    assert "RAY_AUTH_MODE" not in error.message and "token" not in error.message.lower()
    assert error.hint == "ask an administrator for access"


def test_ray_runtime_error_text_becomes_the_gateway_answer() -> None:
    body = {"error": "no such job", "request_id": "r1", "hint": "`raywarden job list` shows the jobs you may see"}
    error = from_ray_text(f"Request failed with status code 404: {json.dumps(body)}.", None)
    assert error.status == 404 and "no such job" in error.message and "r1" in error.message
    assert error.hint is not None and "job list" in error.hint


def test_ray_own_errors_are_shown_as_ray_said_them() -> None:
    text = "Request failed with status code 400: Attempted to delete job 'x', but it is in a non-terminal state."
    error = from_ray_text(text, None)
    assert error.status == 400 and error.message.startswith("Ray answered 400: Attempted to delete job")


def test_refusal_names_action_resource_facts_and_explain() -> None:
    error = refusal(
        403,
        {
            "error": "forbidden",
            "action": "jobs.submit",
            "resource": 'NewJob::"(new)"',
            "reason": "no policy permits this",
            "facts": ["pip_option:--index-url"],
            "request_id": "abc",
            "hint": "ask an administrator",
            "explain": "raywarden policy explain --request-id abc",
        },
    )
    assert "jobs.submit" in error.message and "pip_option:--index-url" in error.message
    assert "request id: abc" in error.message
    assert error.hint == "ask an administrator; raywarden policy explain --request-id abc"


def test_hostile_answers_are_printable() -> None:
    error = refusal(403, {"error": "x\x1b[2J\x07" + "y" * 5000, "request_id": "\r\nfake"})
    assert "\x1b" not in error.message and "\x07" not in error.message and "\r" not in error.message
    assert len(error.message) < 1200


def test_ray_job_cli_module_is_the_reference() -> None:
    # The reference for flags and quoting is Ray's own module, as installed.
    assert "ray/dashboard/modules/job/cli.py" in sys.modules[job_cli_group.callback.__module__].__file__  # type: ignore[union-attr]


def test_an_http_error_from_rays_version_check_is_the_gateway_answer() -> None:
    import requests

    from raywarden.client.jobs import gateway_errors
    from raywarden.errors import GatewayRequestError

    response = requests.Response()
    response.status_code = 503
    response._content = json.dumps({"error": "Ray is not reachable", "request_id": "r9", "hint": "is Ray up?"}).encode()
    with pytest.raises(GatewayRequestError) as info, gateway_errors("https://gw:8443"):
        raise requests.HTTPError("503 Server Error", response=response)
    assert info.value.status == 503 and "Ray is not reachable" in info.value.message and "r9" in info.value.message

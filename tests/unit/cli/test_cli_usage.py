"""Every command and subcommand, as a user mistypes it: one line and a hint, exit 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import click
import pytest
import typer.main

from raywarden.cli import main as cli_main

pytestmark = pytest.mark.unit


def _leaves() -> list[tuple[str, ...]]:
    cli_main._register()
    root = typer.main.get_command(cli_main.app)

    def walk(cmd: click.Command, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in sorted(subs.items()):
                yield from walk(sub, (*path, name))
        else:
            yield path

    return list(walk(root, ()))


def _groups() -> list[tuple[str, ...]]:
    leaves = _leaves()
    return sorted({leaf[:i] for leaf in leaves for i in range(1, len(leaf))})


LEAVES = _leaves()


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["raywarden", *args])
    with pytest.raises(SystemExit) as exited:
        cli_main.main()
    out, err = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 0), out, err


def test_the_tree_is_complete() -> None:
    names = {" ".join(leaf) for leaf in LEAVES}
    for expected in (
        "job submit",
        "job status",
        "job logs",
        "job stop",
        "job delete",
        "job list",
        "profile list",
        "profile use",
        "profile rename",
        "profile delete",
        "whoami",
        "logout",
        "login",
        "token",
        "down",
        "audit actions",
    ):
        assert expected in names


@pytest.mark.parametrize("path", LEAVES, ids=[" ".join(p) for p in LEAVES])
def test_a_bad_flag_is_one_line_and_a_hint(
    path: tuple[str, ...], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_main(monkeypatch, capsys, *path, "--no-such-flag")
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 2, err
    assert lines[0] == "error: No such option: --no-such-flag"
    assert lines[1].startswith("hint: ") and f"raywarden {' '.join(path)} --help" in lines[1]


@pytest.mark.parametrize("path", LEAVES, ids=[" ".join(p) for p in LEAVES])
def test_every_command_has_help_and_json(
    path: tuple[str, ...], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(monkeypatch, capsys, *path, "--help")
    assert code == 0 and "Usage: raywarden" in out and not err
    assert "--json" in out


@pytest.mark.parametrize("group", _groups(), ids=[" ".join(g) for g in _groups()])
def test_an_unknown_subcommand_is_a_usage_error(
    group: tuple[str, ...], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_main(monkeypatch, capsys, *group, "nosuchcommand")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 2
    assert "No such command 'nosuchcommand'" in err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("job", "submit", "--workdir", "examples", "--", "python", "x.py"), ("--working-dir", "after --")),
        (("job", "submit", "python", "-c", "print(1)"), ("No such option: -c", "after --")),
        (
            ("job", "submit", "--entrypoint-num-cpus", "lots", "--", "true"),
            ("Invalid value for '--entrypoint-num-cpus'",),
        ),
        (("job", "status"), ("Missing argument 'JOB_ID'",)),
        (("user", "add"), ("Missing argument 'NAME'",)),
        (("login", "https://gw:8443"), ("Missing option '--code'",)),
        (("scan", "--fail-on", "sometimes", "10.0.0.1"), ("'sometimes' is not one of",)),
        (("audit", "tail", "--lines", "-3"), ("Invalid value for '--lines'",)),
    ],
)
def test_typos_are_named(
    args: tuple[str, ...], words: tuple[str, ...], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_main(monkeypatch, capsys, *args)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 2, err
    flat = " ".join(err.split())
    for word in words:
        assert word in flat


def test_version(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(monkeypatch, capsys, "--version")
    assert code == 0 and out.startswith("raywarden ") and "Ray " in out


def test_no_arguments_prints_help(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(monkeypatch, capsys)
    assert code == 0 and "Usage: raywarden" in out and "job" in out and not err.strip()


def test_the_console_script_behaves_the_same() -> None:
    """Through a real process too: exit status 2, two lines on stderr, nothing on stdout."""
    result = subprocess.run(
        [sys.executable, "-m", "raywarden.cli.main", "job", "submit", "--workdir", "x", "--", "true"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines()[0].startswith("error: No such option: --workdir")

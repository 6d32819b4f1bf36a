"""Output outside a terminal (80 columns): tables never cut a value, hints paste into a shell, scan reads well."""

from __future__ import annotations

import io
import itertools
import shlex
import subprocess
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from raywarden.cli.common import print_next, print_rows
from raywarden.scan.findings import EndpointReport, ScanResult, finding

pytestmark = pytest.mark.unit

SUBMISSION_ID = "raysubmit_Zq8bXbLmN3pQr7sT"
OWNER = "spiffe://a-rather-long-trust-domain.example.com/sa/nightly-training-pipeline"


def _console(width: int = 80) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=width, highlight=False, soft_wrap=True), buffer


def test_ids_are_never_cut_at_80_columns() -> None:
    out, buffer = _console()
    rows = [[SUBMISSION_ID, "RUNNING", OWNER, "python train.py --epochs 30 --data s3://bucket/imagenet " * 3]]
    print_rows(("submission id", "status", "owner", "entrypoint"), rows, wrap=("entrypoint",), out=out)
    text = buffer.getvalue()
    lines = text.splitlines()
    assert any(SUBMISSION_ID in line for line in lines) and any(OWNER in line for line in lines)
    assert "…" not in text
    # the entrypoint wraps instead of pushing the table wide
    assert len([line for line in lines if "--epochs" in line]) >= 2


def test_a_table_that_fits_stays_within_80_columns() -> None:
    out, buffer = _console()
    print_rows(("name", "groups", "status"), [["alice", "developers, viewers", "active"]], wrap=("groups",), out=out)
    assert max(len(line) for line in buffer.getvalue().splitlines()) <= 80


def test_wide_puts_every_row_on_one_line() -> None:
    out, buffer = _console()
    entry = "python train.py " + "--flag value " * 20
    print_rows(("submission id", "entrypoint"), [[SUBMISSION_ID, entry]], wrap=("entrypoint",), wide=True, out=out)
    rows = [line for line in buffer.getvalue().splitlines() if SUBMISSION_ID in line]
    assert len(rows) == 1 and entry.strip() in rows[0]


def test_markup_in_values_is_not_interpreted() -> None:
    from rich.markup import escape

    out, buffer = _console()
    print_rows(("entrypoint",), [[escape("echo [bold]x[/bold] [red]")]], out=out)
    assert "[bold]x[/bold] [red]" in buffer.getvalue()


@pytest.mark.parametrize(
    "words",
    [
        ["raywarden", "job", "submit", "--", "python", "-c", "import ray; ray.init(); print(ray.cluster_resources())"],
        ["raywarden", "up", "--state-dir", "/tmp/my cluster/state"],
        ["raywarden", "login", "https://gw:8443", "--code", "rw1.abc$def", "--ca-fingerprint", "ab" * 32],
    ],
)
def test_next_hints_paste_into_a_shell(words: list[str]) -> None:
    out, buffer = _console(width=40)  # narrower than the command: it must still be one line
    print_next(words, out=out)
    lines = buffer.getvalue().splitlines()
    assert lines[0] == "Next:" and len(lines) == 2
    command = lines[1].strip()
    assert shlex.split(command) == words
    # and a real shell runs it as those words
    echoed = subprocess.run(
        ["/bin/sh", "-c", "printf '%s\\n' " + shlex.join(shlex.split(command)[1:])],
        capture_output=True,
        text=True,
        check=True,
    )
    assert echoed.stdout.splitlines() == words[1:]


def _scan_app() -> Any:
    import typer

    from raywarden.cli import scan as scan_cli

    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """Test root."""

    scan_cli.register(app)
    return app


def test_scan_findings_read_well_at_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    from raywarden.cli import scan as scan_cli

    async def fake_run_plan(plan: Any, **_: Any) -> ScanResult:
        result = ScanResult(targets=["10.0.0.1"], ports=[8265])
        result.endpoints.append(EndpointReport("10.0.0.1", 8265, "10.0.0.1", state="open"))
        result.findings = [
            finding(
                "RW-JOBS-UNAUTH",
                "http://10.0.0.1:8265",
                "GET /api/jobs/ -> 200 application/json without credentials: a JSON list of 3 jobs, "
                "including entrypoints and runtime environments of other users",
                host="10.0.0.1",
                port=8265,
            )
        ]
        return result

    monkeypatch.setattr(scan_cli, "run_plan", fake_run_plan)
    monkeypatch.setenv("COLUMNS", "80")
    result = CliRunner().invoke(_scan_app(), ["scan", "10.0.0.1", "--fail-on", "none"])
    lines = result.stdout.splitlines()
    assert result.exit_code == 0, result.stdout
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    # paragraphs, never a column of single words (the old table folded its text one word per line)
    single = [len(line.split()) == 1 for line in lines]
    assert not any(a and b for a, b in itertools.pairwise(single))
    assert any(line.startswith("CRITICAL  RW-JOBS-UNAUTH  http://10.0.0.1:8265") for line in lines)
    assert any(line.startswith("  evidence: GET /api/jobs/") for line in lines)

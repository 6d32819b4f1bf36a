"""`raywarden scan` exit codes, --fail-on gating, --json and --sarif, with the network stubbed out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from raywarden.cli import scan as scan_cli
from raywarden.errors import RaywardenError
from raywarden.scan.findings import EndpointReport, ScanResult, finding
from raywarden.scan.targets import ScanPlan

pytestmark = pytest.mark.unit


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """Test root so that `scan` is a sub-command, as under raywarden.cli.main."""

    scan_cli.register(app)
    return app


def _invoke(args: list[str]) -> tuple[int, str]:
    """Run like raywarden.cli.main does: a RaywardenError becomes its exit code."""
    result = CliRunner().invoke(_app(), ["scan", *args])
    if isinstance(result.exception, RaywardenError):
        return result.exception.exit_code, result.stdout
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout


def _stub(
    monkeypatch: pytest.MonkeyPatch, severities: list[str], *, reachable: bool = True, errors: list[str] | None = None
) -> list[ScanPlan]:
    plans: list[ScanPlan] = []
    rules = {
        "critical": "RW-JOBS-UNAUTH",
        "high": "RW-TOKEN-AUTH-OFF",
        "medium": "RW-METRICS-OPEN",
        "low": "RW-TLS-UNTRUSTED",
        "info": "RW-RAY-VERSION",
    }

    async def fake_run_plan(plan: ScanPlan, **_: Any) -> ScanResult:
        plans.append(plan)
        result = ScanResult(targets=[s.raw for s in plan.specs], ports=list(plan.ports), errors=errors or [])
        result.endpoints.append(EndpointReport("127.0.0.1", 8265, "127.0.0.1", state="open" if reachable else "closed"))
        result.findings = [
            finding(rules[s], "http://127.0.0.1:8265", "e", host="127.0.0.1", port=8265) for s in severities
        ]
        return result

    monkeypatch.setattr(scan_cli, "run_plan", fake_run_plan)
    return plans


@pytest.mark.parametrize(
    ("severities", "fail_on", "code"),
    [
        ([], "high", 0),
        (["info", "low", "medium"], "high", 0),
        (["high"], "high", 1),
        (["critical"], "high", 1),
        (["medium"], "medium", 1),
        (["info"], "info", 1),
        (["critical"], "none", 0),
        (["critical"], "CRITICAL", 1),
    ],
)
def test_fail_on_gating(monkeypatch: pytest.MonkeyPatch, severities: list[str], fail_on: str, code: int) -> None:
    _stub(monkeypatch, severities)
    assert _invoke(["127.0.0.1", "--fail-on", fail_on])[0] == code


def test_default_fail_on_is_high(monkeypatch: pytest.MonkeyPatch) -> None:
    _stub(monkeypatch, ["medium"])
    assert _invoke(["127.0.0.1"])[0] == 0
    _stub(monkeypatch, ["high"])
    assert _invoke(["127.0.0.1"])[0] == 1


def test_nothing_reachable_is_a_scan_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _stub(monkeypatch, [], reachable=False)
    assert _invoke(["127.0.0.1"])[0] == 2


def test_findings_win_over_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    _stub(monkeypatch, ["critical"], errors=["x: probes exceeded 30s"])
    assert _invoke(["127.0.0.1"])[0] == 1
    _stub(monkeypatch, ["info"], errors=["x: probes exceeded 30s"])
    assert _invoke(["127.0.0.1"])[0] == 2


@pytest.mark.parametrize(
    "args",
    [
        ["not a host"],
        ["10.0.0.0/8"],
        ["127.0.0.1", "--ports", "0"],
        ["127.0.0.1", "--timeout", "0"],
        ["127.0.0.1", "--concurrency", "0"],
        ["127.0.0.1", "--concurrency", "5000"],
        ["127.0.0.1", "--max-hosts", "0"],
    ],
)
def test_bad_input_exits_2_before_any_probe(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    plans = _stub(monkeypatch, [])
    assert _invoke(args)[0] == 2
    assert plans == []


def test_ports_option(monkeypatch: pytest.MonkeyPatch) -> None:
    plans = _stub(monkeypatch, [])
    assert _invoke(["127.0.0.1", "-p", "8265,44217", "-p", "9000-9001"])[0] == 0
    assert plans[0].ports == (8265, 44217, 9000, 9001)


def test_json_output_is_pure_json(monkeypatch: pytest.MonkeyPatch) -> None:
    _stub(monkeypatch, ["critical", "info"])
    code, out = _invoke(["10.0.0.0/30", "--json"])
    assert code == 1
    data = json.loads(out)
    assert data["fail_on"] == "high" and data["failing"] == 1
    assert [f["id"] for f in data["findings"]] == ["RW-JOBS-UNAUTH", "RW-RAY-VERSION"]
    first = data["findings"][0]
    assert set(first) >= {"id", "severity", "title", "target", "evidence", "fix", "cves"}


def test_sarif_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _stub(monkeypatch, ["critical"])
    out = tmp_path / "scan.sarif"
    assert _invoke(["127.0.0.1", "--sarif", str(out)])[0] == 1
    doc = json.loads(out.read_text())
    assert doc["version"] == "2.1.0" and doc["runs"][0]["results"][0]["ruleId"] == "RW-JOBS-UNAUTH"


def test_help_says_what_is_sent() -> None:
    result = CliRunner().invoke(_app(), ["scan", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for text in (
        "/api/jobs/",
        "/api/version",
        "/metrics",
        "/-/routes",
        "HTTP/2 client preface",
        "No stream",
        "POST",
        "Exit codes",
    ):
        assert text in result.stdout, text

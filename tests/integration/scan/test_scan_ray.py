"""Scan a real, stock Ray head: the Jobs API exposure is reported, and the scan leaves no trace."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import typer
from typer.testing import CliRunner

from raywarden.cli import scan as scan_cli
from raywarden.scan import scan_targets

if TYPE_CHECKING:  # the fixture's type; conftest is not importable as a module under pytest
    from conftest import RayHead

pytestmark = pytest.mark.integration


def _job_count(head: RayHead) -> int:
    with urllib.request.urlopen(f"{head.dashboard}/api/jobs/", timeout=10) as resp:
        jobs = json.load(resp)
    assert isinstance(jobs, list)
    return len(jobs)


def _cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """raywarden (test root)."""

    scan_cli.register(app)
    return app


def test_library_reports_every_exposure_of_a_stock_head(ray_head: RayHead) -> None:
    before = _job_count(ray_head)
    result = scan_targets(["127.0.0.1"], ports=ray_head.ports, timeout=5.0, concurrency=8)
    found = {(f.id, f.port): f for f in result.findings}

    jobs = found[("RW-JOBS-UNAUTH", ray_head.dashboard_port)]
    assert jobs.severity == "critical" and jobs.cves == ("CVE-2023-48022",)
    assert "GET /api/jobs/ -> 200" in jobs.evidence
    assert found[("RW-TOKEN-AUTH-OFF", ray_head.dashboard_port)].severity == "high"
    assert ("RW-DASH-NO-TLS", ray_head.dashboard_port) in found
    assert "2.60.0" in found[("RW-RAY-VERSION", ray_head.dashboard_port)].evidence
    assert found[("RW-GRPC-PLAINTEXT", ray_head.gcs_port)].severity == "high"
    assert found[("RW-GRPC-PLAINTEXT", ray_head.client_port)].severity == "high"
    assert found[("RW-AGENT-UNAUTH", ray_head.agent_port)].severity == "critical"
    assert ("RW-METRICS-OPEN", ray_head.metrics_port) in found
    assert not [f for f in result.findings if f.id.startswith("RW-CVE-")]  # 2.60.0 has none of the listed CVEs
    assert result.errors == []

    assert _job_count(ray_head) == before, "the scan must not create jobs"


def test_cli_exits_1_and_writes_json_and_sarif(ray_head: RayHead, tmp_path: Path) -> None:
    before = _job_count(ray_head)
    sarif = tmp_path / "scan.sarif"
    ports = ",".join(map(str, ray_head.ports))
    result = CliRunner().invoke(_cli(), ["scan", "127.0.0.1", "--ports", ports, "--json", "--sarif", str(sarif)])
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert any(f["id"] == "RW-JOBS-UNAUTH" and f["severity"] == "critical" for f in data["findings"])
    doc = json.loads(sarif.read_text())
    assert "RW-JOBS-UNAUTH" in {r["ruleId"] for r in doc["runs"][0]["results"]}

    # Explicit host:port targets and the dashboard URL form reach the same verdict.
    result = CliRunner().invoke(_cli(), ["scan", f"{ray_head.dashboard}/", "--fail-on", "critical"])
    assert result.exit_code == 1, result.output
    assert _job_count(ray_head) == before, "the scan must not create jobs"

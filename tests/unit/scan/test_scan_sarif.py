"""SARIF 2.1.0 output: the fields code-scanning dashboards require, for every finding."""

from __future__ import annotations

import json

import pytest

from raywarden.scan.cves import cve_findings
from raywarden.scan.findings import Finding, ScanResult, finding
from raywarden.scan.sarif import to_sarif

pytestmark = pytest.mark.unit


def _result(findings: list[Finding], errors: list[str] | None = None) -> ScanResult:
    return ScanResult(
        targets=["127.0.0.1"],
        ports=[8265],
        findings=findings,
        errors=errors or [],
        started="2026-01-01T00:00:00+00:00",
        finished="2026-01-01T00:00:05+00:00",
    )


def _findings() -> list[Finding]:
    return [
        finding(
            "RW-JOBS-UNAUTH",
            "http://127.0.0.1:8265",
            "GET /api/jobs/ -> 200",
            host="127.0.0.1",
            port=8265,
            cves=("CVE-2023-48022",),
        ),
        finding("RW-METRICS-OPEN", "http://127.0.0.1:8080", "GET /metrics -> 200", host="127.0.0.1", port=8080),
        finding("RW-METRICS-OPEN", "http://127.0.0.1:8081", "GET /metrics -> 200", host="127.0.0.1", port=8081),
        finding("RW-RAY-VERSION", "http://127.0.0.1:8265", "2.8.0", host="127.0.0.1", port=8265),
        *cve_findings("2.8.0", "http://127.0.0.1:8265", host="127.0.0.1", port=8265),
    ]


def test_minimal_required_sarif_fields() -> None:
    doc = to_sarif(_result(_findings()))
    json.dumps(doc)  # must be serialisable as-is
    assert doc["version"] == "2.1.0"
    assert doc["$schema"].endswith("sarif-2.1.0.json")
    (run,) = doc["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "raywarden-scan" and driver["version"]
    rule_ids = [r["id"] for r in driver["rules"]]
    assert len(rule_ids) == len(set(rule_ids))
    for rule in driver["rules"]:
        assert rule["shortDescription"]["text"] and rule["fullDescription"]["text"] and rule["help"]["text"]
        assert rule["defaultConfiguration"]["level"] in {"error", "warning", "note"}
        assert float(rule["properties"]["security-severity"]) >= 0
    assert len(run["results"]) == len(_findings())
    for res in run["results"]:
        assert res["ruleId"] in rule_ids
        assert driver["rules"][res["ruleIndex"]]["id"] == res["ruleId"]
        assert res["level"] in {"error", "warning", "note"}
        assert res["message"]["text"]
        (loc,) = res["locations"]
        assert loc["physicalLocation"]["artifactLocation"]["uri"].startswith("http")
        assert res["partialFingerprints"]
    (invocation,) = run["invocations"]
    assert invocation["executionSuccessful"] is True
    assert invocation["startTimeUtc"].endswith("Z")


def test_levels_follow_severity() -> None:
    run = to_sarif(_result(_findings()))["runs"][0]
    levels = {r["ruleId"]: r["level"] for r in run["results"]}
    assert levels["RW-JOBS-UNAUTH"] == "error"
    assert levels["RW-METRICS-OPEN"] == "warning"
    assert levels["RW-RAY-VERSION"] == "note"
    assert levels["RW-CVE-2023-6019"] == "error"


def test_fingerprints_are_stable_and_distinct() -> None:
    a = to_sarif(_result(_findings()))["runs"][0]["results"]
    b = to_sarif(_result(_findings()))["runs"][0]["results"]
    assert [r["partialFingerprints"] for r in a] == [r["partialFingerprints"] for r in b]
    prints = [next(iter(r["partialFingerprints"].values())) for r in a]
    assert len(prints) == len(set(prints))


def test_empty_scan_and_errors() -> None:
    doc = to_sarif(_result([], errors=["10.0.0.1:8265: probes exceeded 30s"]))
    (run,) = doc["runs"]
    assert run["results"] == [] and run["tool"]["driver"]["rules"] == []
    assert run["invocations"][0]["executionSuccessful"] is False
    assert run["invocations"][0]["toolExecutionNotifications"][0]["message"]["text"]

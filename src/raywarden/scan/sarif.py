"""Render a ScanResult as SARIF 2.1.0 for code-scanning dashboards."""

from __future__ import annotations

import hashlib
from typing import Any

from raywarden import __version__
from raywarden.scan.cves import CVE_RULES
from raywarden.scan.findings import RULES, Finding, Rule, ScanResult

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://github.com/raywarden/raywarden/blob/main/docs/scan.md"

# SARIF has three result levels; GitHub code scanning ranks security alerts by the
# "security-severity" property (a CVSS-like score) instead, so both are filled in.
_LEVEL = {"critical": "error", "high": "error", "medium": "warning", "low": "note", "info": "note"}
_SECURITY_SEVERITY = {"critical": "9.5", "high": "8.0", "medium": "5.5", "low": "3.0", "info": "0.0"}


def rule_for(rule_id: str) -> Rule | None:
    return RULES.get(rule_id) or CVE_RULES.get(rule_id)


def _rule_descriptor(rule: Rule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "name": "".join(part.capitalize() for part in rule.id.replace("RW-", "").split("-")),
        "shortDescription": {"text": rule.title},
        "fullDescription": {"text": rule.description},
        "help": {"text": rule.fix, "markdown": f"**Fix:** {rule.fix}"},
        "helpUri": INFORMATION_URI,
        "defaultConfiguration": {"level": _LEVEL[rule.severity]},
        "properties": {
            "tags": ["security", "ray"],
            "security-severity": _SECURITY_SEVERITY[rule.severity],
            "problem.severity": "recommendation" if rule.severity == "info" else "error",
        },
    }


def _result(f: Finding, rule_index: int) -> dict[str, Any]:
    fingerprint = hashlib.sha256(f"{f.id}\0{f.target}".encode()).hexdigest()
    return {
        "ruleId": f.id,
        "ruleIndex": rule_index,
        "level": _LEVEL[f.severity],
        "message": {"text": f"{f.title} at {f.target}. Evidence: {f.evidence}. Fix: {f.fix}"},
        # Network endpoints are not files; the URL is the artifact, and a logical location names it too.
        "locations": [
            {
                "physicalLocation": {"artifactLocation": {"uri": f.target}},
                "logicalLocations": [{"name": f.target, "kind": "resource"}],
            }
        ],
        "partialFingerprints": {"raywardenFinding/v1": fingerprint},
        "properties": {
            "severity": f.severity,
            "security-severity": _SECURITY_SEVERITY[f.severity],
            "evidence": f.evidence,
            "cves": list(f.cves),
        },
    }


def _utc(stamp: str) -> str:
    # SARIF section 3.9: times are UTC in ISO 8601 with a "Z" suffix.
    return stamp.replace("+00:00", "Z")


def _invocation(result: ScanResult) -> dict[str, Any]:
    invocation: dict[str, Any] = {
        "executionSuccessful": not result.errors,
        "toolExecutionNotifications": [{"level": "warning", "message": {"text": e}} for e in result.errors],
    }
    if result.started:
        invocation["startTimeUtc"] = _utc(result.started)
    if result.finished:
        invocation["endTimeUtc"] = _utc(result.finished)
    return invocation


def to_sarif(result: ScanResult) -> dict[str, Any]:
    """One run, one rule per finding id seen, one result per finding."""
    rule_ids = sorted({f.id for f in result.findings})
    rules: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    for rule_id in rule_ids:
        rule = rule_for(rule_id)
        if rule is None:  # pragma: no cover - every finding comes from one of the two catalogues
            raise KeyError(rule_id)
        index[rule_id] = len(rules)
        rules.append(_rule_descriptor(rule))
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "raywarden-scan",
                        "semanticVersion": __version__,
                        "version": __version__,
                        "informationUri": INFORMATION_URI,
                        "rules": rules,
                    }
                },
                "invocations": [_invocation(result)],
                "results": [_result(f, index[f.id]) for f in result.findings],
            }
        ],
    }

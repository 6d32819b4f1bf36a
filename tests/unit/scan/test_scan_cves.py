"""The CVE table: version matching at each fixed-version boundary, and the docs table kept in step."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from raywarden.scan.cves import CVE_BY_ID, CVES, affected_by, cve_findings, cves_for_version, parse_version

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parents[3] / "docs" / "scan.md"


def ids(version: str) -> set[str]:
    return {c.id for c in cves_for_version(version)}


def test_version_order() -> None:
    keys = [
        parse_version(v)
        for v in ("2.8.0", "2.8.1rc0", "2.8.1", "2.8.1.post1", "2.9", "2.52.0.dev0", "2.52.0rc1", "2.52.0", "2.60.0")
    ]
    assert None not in keys
    assert keys[2] == keys[3]  # post releases carry the same fix
    assert keys == sorted(keys)  # type: ignore[type-var]
    assert parse_version("2.8") == parse_version("2.8.0")


@pytest.mark.parametrize("text", ["", "latest", "abc", "2.x", "2.8.0 beta junk"])
def test_unparsable_versions_match_nothing(text: str) -> None:
    assert parse_version(text) is None
    assert cves_for_version(text) == []


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        (
            "2.6.3",
            {
                "CVE-2023-48023",
                "CVE-2023-6019",
                "CVE-2023-6020",
                "CVE-2023-6021",
                "CVE-2025-1979",
                "CVE-2025-62593",
                "CVE-2026-27482",
            },
        ),
        (
            "2.8.0",
            {
                "CVE-2023-48023",
                "CVE-2023-6019",
                "CVE-2023-6020",
                "CVE-2023-6021",
                "CVE-2025-1979",
                "CVE-2025-62593",
                "CVE-2026-27482",
            },
        ),
        (
            "2.8.1rc0",
            {
                "CVE-2023-48023",
                "CVE-2023-6019",
                "CVE-2023-6020",
                "CVE-2023-6021",
                "CVE-2025-1979",
                "CVE-2025-62593",
                "CVE-2026-27482",
            },
        ),
        ("2.8.1", {"CVE-2025-1979", "CVE-2025-62593", "CVE-2026-27482"}),
        ("2.42.1", {"CVE-2025-1979", "CVE-2025-62593", "CVE-2026-27482"}),
        ("2.43.0", {"CVE-2025-62593", "CVE-2026-27482"}),
        ("2.51.1", {"CVE-2025-62593", "CVE-2026-27482"}),
        ("2.52.0", {"CVE-2026-27482"}),
        ("2.53.0", {"CVE-2026-27482"}),
        ("2.54.0", set()),
        ("2.60.0", set()),
    ],
)
def test_fixed_version_boundaries(version: str, expected: set[str]) -> None:
    assert ids(version) == expected


def test_disputed_config_cve_is_never_matched_by_version() -> None:
    shadowray = CVE_BY_ID["CVE-2023-48022"]
    assert shadowray.fixed_in is None and shadowray.disputed and not shadowray.version_matched
    for version in ("1.0.0", "2.8.0", "2.60.0"):
        assert affected_by(version, shadowray) is None


def test_cve_findings_carry_the_cve_and_its_fix() -> None:
    findings = cve_findings("2.8.0", "http://h:8265", host="h", port=8265)
    by_id = {f.id: f for f in findings}
    f = by_id["RW-CVE-2023-6019"]
    assert f.severity == "critical" and f.cves == ("CVE-2023-6019",) and "2.8.1" in f.fix
    assert "2.8.0" in f.evidence


def test_docs_table_matches_code() -> None:
    """docs/scan.md cites a source for every CVE; its fixed versions must agree with the code."""
    text = DOCS.read_text()
    for cve in CVES:
        row = next((line for line in text.splitlines() if line.startswith(f"| {cve.id} ")), None)
        assert row is not None, f"{cve.id} missing from docs/scan.md"
        cells = [c.strip() for c in row.strip("|").split("|")]
        fixed_cell = cells[3]
        if cve.fixed_in is None:
            assert "none" in fixed_cell.lower()
        else:
            assert re.search(rf"\b{re.escape(cve.fixed_in)}\b", fixed_cell), (cve.id, fixed_cell)
        assert "http" in row, f"{cve.id} row cites no source"

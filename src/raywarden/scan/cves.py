"""Published Ray CVEs with their fixed versions, and matching a reported Ray version against them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from raywarden.scan.findings import Finding, Rule, Severity


@dataclass(frozen=True)
class Cve:
    """One published Ray CVE. ``fixed_in`` None means no Ray release fixes it."""

    id: str
    title: str
    severity: Severity
    cvss: str
    fixed_in: str | None
    fix: str
    source: str
    disputed: bool = False
    # False when being affected depends on configuration rather than version (see CVE-2023-48022).
    version_matched: bool = True

    @property
    def rule_id(self) -> str:
        return f"RW-{self.id}"


_UPGRADE = "Upgrade Ray to {} or later."

# Sources: the CVE records (github.com/CVEProject/cvelistV5) and the PyPA advisory database;
# docs/scan.md has the table with links. Keep the two in step.
CVES: tuple[Cve, ...] = (
    Cve(
        "CVE-2023-48022",
        "Jobs API runs arbitrary code without authentication (ShadowRay)",
        "critical",
        "9.8 (CVSS 3.1)",
        None,
        "No Ray release fixes it: the vendor disputes it (Ray is meant for trusted networks). Turn on "
        "token auth (RAY_AUTH_MODE=token, Ray >= 2.52) and put a raywarden gateway in front.",
        "https://github.com/CVEProject/cvelistV5/blob/main/cves/2023/48xxx/CVE-2023-48022.json",
        disputed=True,
        version_matched=False,
    ),
    Cve(
        "CVE-2023-48023",
        "Server-side request forgery through /log_proxy",
        "critical",
        "9.1 (CVSS 3.1, NVD)",
        "2.8.1",
        _UPGRADE.format("2.8.1"),
        "https://github.com/CVEProject/cvelistV5/blob/main/cves/2023/48xxx/CVE-2023-48023.json",
        disputed=True,
    ),
    Cve(
        "CVE-2023-6019",
        "Command injection in the dashboard's cpu_profile format parameter",
        "critical",
        "9.8 (CVSS 3.1)",
        "2.8.1",
        _UPGRADE.format("2.8.1"),
        "https://github.com/CVEProject/cvelistV5/blob/main/cves/2023/6xxx/CVE-2023-6019.json",
    ),
    Cve(
        "CVE-2023-6020",
        "Any file readable through /static/ path traversal",
        "high",
        "7.5 (CVSS 3.1)",
        "2.8.1",
        _UPGRADE.format("2.8.1"),
        "https://github.com/CVEProject/cvelistV5/blob/main/cves/2023/6xxx/CVE-2023-6020.json",
    ),
    Cve(
        "CVE-2023-6021",
        "Any file readable through the log API's filename parameter",
        "high",
        "7.5 (CVSS 3.1)",
        "2.8.1",
        _UPGRADE.format("2.8.1"),
        "https://github.com/CVEProject/cvelistV5/blob/main/cves/2023/6xxx/CVE-2023-6021.json",
    ),
    Cve(
        "CVE-2025-1979",
        "Redis password written to Ray's logs",
        "medium",
        "6.4 (CVSS 3.0)",
        "2.43.0",
        _UPGRADE.format("2.43.0") + " Rotate the Redis password if Ray ever ran with one.",
        "https://github.com/pypa/advisory-database/blob/main/vulns/ray/PYSEC-2025-23.yaml",
    ),
    Cve(
        "CVE-2025-62593",
        "Browser-borne RCE via DNS rebinding (User-Agent check bypass)",
        "critical",
        "9.4 (CVSS 4.0)",
        "2.52.0",
        _UPGRADE.format("2.52.0") + " Turn on token auth as well.",
        "https://github.com/CVEProject/cvelistV5/blob/main/cves/2025/62xxx/CVE-2025-62593.json",
    ),
    Cve(
        "CVE-2026-27482",
        "Unauthenticated DELETE from browsers stops Serve or deletes jobs",
        "medium",
        "5.9 (CVSS 3.1)",
        "2.54.0",
        _UPGRADE.format("2.54.0"),
        "https://github.com/pypa/advisory-database/blob/main/vulns/ray/PYSEC-2026-2271.yaml",
    ),
)
CVE_BY_ID: dict[str, Cve] = {c.id: c for c in CVES}

CVE_RULES: dict[str, Rule] = {
    c.rule_id: Rule(
        c.rule_id,
        f"{c.id}: {c.title}",
        c.severity,
        c.fix,
        f"{c.id} ({c.cvss}{', disputed by the vendor' if c.disputed else ''}): {c.title}. "
        f"Fixed in: {c.fixed_in or 'no release'}. Source: {c.source}",
    )
    for c in CVES
}

_VERSION = re.compile(r"^v?(\d+(?:\.\d+)*)(?:[.-]?(a|alpha|b|beta|rc|c|dev)[.-]?(\d*))?(?:\.post\d+)?(?:\+.*)?$")
_PRE_RANK = {"dev": -1, "a": 0, "alpha": 0, "b": 1, "beta": 1, "rc": 2, "c": 2}
_FINAL = 3

VersionKey = tuple[tuple[int, ...], int, int]


def parse_version(text: str) -> VersionKey | None:
    """A sortable key for a PEP 440-ish Ray version, or None if it is not one.

    Pre-releases sort before their release (2.52.0rc1 < 2.52.0): a release candidate of the fixed
    version may not contain the fix, so it counts as affected.
    """
    match = _VERSION.match(text.strip().lower())
    if not match:
        return None
    release = tuple(int(part) for part in match.group(1).split("."))
    release = release + (0,) * (4 - len(release)) if len(release) < 4 else release
    tag = match.group(2)
    rank = _PRE_RANK[tag] if tag else _FINAL
    number = int(match.group(3)) if tag and match.group(3) else 0
    return release, rank, number


def affected_by(version: str, cve: Cve) -> bool | None:
    """True/False when the version decides it; None when the version is unparsable or does not decide."""
    if not cve.version_matched:
        return None
    key = parse_version(version)
    if key is None:
        return None
    if cve.fixed_in is None:
        return True
    fixed = parse_version(cve.fixed_in)
    if fixed is None:  # pragma: no cover - the table above holds only valid versions
        return None
    return key < fixed


def cves_for_version(version: str) -> list[Cve]:
    """The version-matched CVEs that affect ``version`` (empty if it is unparsable)."""
    return [cve for cve in CVES if affected_by(version, cve)]


def cve_findings(version: str, target: str, *, host: str, port: int) -> list[Finding]:
    findings = []
    for cve in cves_for_version(version):
        disputed = " The vendor disputes this CVE." if cve.disputed else ""
        findings.append(
            Finding(
                id=cve.rule_id,
                severity=cve.severity,
                title=f"{cve.id}: {cve.title}",
                target=target,
                evidence=f"GET /api/version reported ray_version {version}; {cve.id} is fixed in "
                f"{cve.fixed_in}.{disputed}",
                fix=cve.fix,
                cves=(cve.id,),
                host=host,
                port=port,
            )
        )
    return findings

"""Safe, read-only checks of Ray endpoints for the known exposures (`raywarden scan`)."""

from __future__ import annotations

from raywarden.scan.cves import CVES, Cve, cves_for_version
from raywarden.scan.errors import ScanError
from raywarden.scan.findings import SEVERITIES, EndpointReport, Finding, ScanResult, Severity
from raywarden.scan.runner import scan_targets, scan_targets_async
from raywarden.scan.sarif import to_sarif
from raywarden.scan.targets import DEFAULT_MAX_HOSTS, DEFAULT_PORTS

__all__ = [
    "CVES",
    "DEFAULT_MAX_HOSTS",
    "DEFAULT_PORTS",
    "SEVERITIES",
    "Cve",
    "EndpointReport",
    "Finding",
    "ScanError",
    "ScanResult",
    "Severity",
    "cves_for_version",
    "scan_targets",
    "scan_targets_async",
    "to_sarif",
]

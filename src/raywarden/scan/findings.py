"""Severities, the catalogue of scan rules, and the Finding and ScanResult records."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["critical", "high", "medium", "low", "info"]
SEVERITIES: tuple[Severity, ...] = ("critical", "high", "medium", "low", "info")
_RANK: dict[str, int] = {name: len(SEVERITIES) - i for i, name in enumerate(SEVERITIES)}


def severity_rank(severity: str) -> int:
    """Higher is worse; unknown names rank below info so they can never trip a gate by accident."""
    return _RANK.get(severity, 0)


def at_or_above(severity: str, threshold: str) -> bool:
    return severity_rank(severity) >= severity_rank(threshold)


@dataclass(frozen=True)
class Rule:
    """A kind of finding: stable id, default severity, and the fix an operator should apply."""

    id: str
    title: str
    severity: Severity
    fix: str
    description: str


_GATEWAY_FIX = (
    "Put the endpoint behind a raywarden gateway (`raywarden up`), bind Ray to loopback "
    "(--dashboard-host 127.0.0.1), and firewall the port from everything but the gateway."
)

RULES: dict[str, Rule] = {
    rule.id: rule
    for rule in (
        Rule(
            "RW-JOBS-UNAUTH",
            "Ray Jobs API answers without credentials",
            "critical",
            "Enable Ray token auth (RAY_AUTH_MODE=token, Ray >= 2.52) and never expose the dashboard "
            "port (8265) to untrusted networks. " + _GATEWAY_FIX,
            "GET /api/jobs/ returned 200 without any credential. The same API accepts POST /api/jobs/, "
            "which runs any shell command on the cluster (CVE-2023-48022, ShadowRay).",
        ),
        Rule(
            "RW-AGENT-UNAUTH",
            "Ray dashboard agent job API answers without credentials",
            "critical",
            "Enable Ray token auth (RAY_AUTH_MODE=token) and keep the agent port (52365) reachable only "
            "from the head node. " + _GATEWAY_FIX,
            "The dashboard agent looked up a job for an unauthenticated request. The agent's "
            "POST /api/job_agent/jobs/ starts jobs, so anyone who reaches it can run commands.",
        ),
        Rule(
            "RW-TOKEN-AUTH-OFF",
            "Ray token authentication is off",
            "high",
            "Start Ray with RAY_AUTH_MODE=token (Ray >= 2.52), or let raywarden manage the cluster "
            "(`raywarden up`), which turns it on and keeps the token on the nodes.",
            'GET /api/authentication_mode reported "disabled": every Ray endpoint accepts anyone.',
        ),
        Rule(
            "RW-TOKEN-AUTH-ON",
            "Ray token authentication is on",
            "info",
            "Token auth is one shared bearer token: no per-user identity, audit or revocation. "
            "A raywarden gateway adds those in front of Ray.",
            "Unauthenticated requests are refused by Ray's token auth (HTTP 401/403).",
        ),
        Rule(
            "RW-DASH-NO-TLS",
            "Ray HTTP endpoint served without TLS",
            "medium",
            "Serve the dashboard only through a TLS gateway (raywarden) and bind Ray's own HTTP "
            "ports to loopback; with token auth on, the token otherwise crosses the network in clear.",
            "A Ray dashboard, dashboard agent or gateway answered over plaintext HTTP.",
        ),
        Rule(
            "RW-HTTP-TLS",
            "HTTP endpoint uses TLS",
            "info",
            "None needed. Pass --ca to also check the certificate chain.",
            "The endpoint completed a TLS handshake; the certificate was not verified unless --ca was given.",
        ),
        Rule(
            "RW-TLS-UNTRUSTED",
            "TLS certificate does not verify against the given CA",
            "low",
            "Issue the endpoint's certificate from the CA clients are told to trust, "
            "with the scanned host name or address in its subject alternative names.",
            "The TLS certificate failed verification against the CA file given with --ca.",
        ),
        Rule(
            "RW-RAY-VERSION",
            "Ray version disclosed",
            "info",
            "Keep Ray current; see the CVE findings for this version, if any.",
            "GET /api/version disclosed the Ray version to an unauthenticated client.",
        ),
        Rule(
            "RW-GRPC-PLAINTEXT",
            "gRPC port accepts plaintext connections",
            "high",
            "Run Ray with mutual TLS (RAY_USE_TLS=1 with RAY_TLS_SERVER_CERT, RAY_TLS_SERVER_KEY, "
            "RAY_TLS_CA_CERT; `raywarden up` does this) and firewall GCS (6379) and Ray Client (10001) "
            "ports to cluster nodes only.",
            "The port answered a cleartext HTTP/2 client preface with a SETTINGS frame: a gRPC server "
            "(GCS, Ray Client, raylet or agent) that anyone on the network can talk to. Without token "
            "auth, Ray Client and GCS access means running code on the cluster.",
        ),
        Rule(
            "RW-GRPC-TLS-NO-CLIENT-CERT",
            "gRPC port accepts TLS without a client certificate",
            "high",
            "Require client certificates on Ray's gRPC ports (RAY_USE_TLS=1 with RAY_TLS_CA_CERT set, "
            "which makes Ray demand and verify them) and issue them only to cluster nodes.",
            "A TLS handshake without a client certificate completed and the server then sent its "
            "HTTP/2 SETTINGS frame: TLS hides the traffic but does not keep strangers out.",
        ),
        Rule(
            "RW-TLS-CLIENT-CERT-REQUIRED",
            "Port requires a TLS client certificate",
            "info",
            "None needed: mutual TLS keeps out clients without a certificate from the trusted CA.",
            "The server refused to continue without a client certificate.",
        ),
        Rule(
            "RW-METRICS-OPEN",
            "Prometheus metrics readable without credentials",
            "medium",
            "Bind Ray's metrics export ports to an internal interface and firewall them to the "
            "Prometheus server (Ray's metrics ports listen on 0.0.0.0 by default).",
            "GET /metrics returned Prometheus text exposition: node names, job and actor ids, resource "
            "and usage data for anyone on the network.",
        ),
        Rule(
            "RW-SERVE-OPEN",
            "Ray Serve HTTP proxy reachable without credentials",
            "medium",
            "Put Serve applications behind an authenticating proxy or gateway unless they are meant to "
            "be public, and bind the Serve proxy (port 8000) to an internal interface.",
            "GET /-/routes listed the Serve applications to an unauthenticated client.",
        ),
        Rule(
            "RW-GATEWAY",
            "raywarden gateway",
            "info",
            "None needed: the gateway refuses unauthenticated requests.",
            "The endpoint answered an unauthenticated request with 401 and X-Raywarden-Gateway: 1.",
        ),
    )
}


@dataclass(frozen=True)
class Finding:
    """One problem (or notable fact) seen on one endpoint, with what proved it and what to do."""

    id: str
    severity: Severity
    title: str
    target: str
    evidence: str
    fix: str
    cves: tuple[str, ...] = ()
    host: str = ""
    port: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cves"] = list(self.cves)
        return data


def finding(
    rule_id: str,
    target: str,
    evidence: str,
    *,
    host: str = "",
    port: int = 0,
    severity: Severity | None = None,
    cves: tuple[str, ...] = (),
) -> Finding:
    """Build a finding from the rule catalogue; ``severity`` overrides the rule's default."""
    rule = RULES[rule_id]
    return Finding(
        id=rule.id,
        severity=severity or rule.severity,
        title=rule.title,
        target=target,
        evidence=evidence,
        fix=rule.fix,
        cves=cves,
        host=host,
        port=port,
    )


@dataclass
class EndpointReport:
    """What one host:port turned out to be; kept for --json even when it produced no finding."""

    host: str
    port: int
    target: str
    state: Literal["open", "closed", "error"] = "closed"
    service: str = "unknown"
    tls: bool | None = None
    detail: str = ""
    requests: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScanResult:
    """Everything a scan saw: findings, per-endpoint reports and scan-level errors."""

    targets: list[str]
    ports: list[int]
    findings: list[Finding] = field(default_factory=list)
    endpoints: list[EndpointReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    started: str = ""
    finished: str = ""

    @property
    def reachable(self) -> int:
        return sum(1 for e in self.endpoints if e.state == "open")

    def worst(self) -> Severity | None:
        if not self.findings:
            return None
        return max(self.findings, key=lambda f: severity_rank(f.severity)).severity

    def failing(self, threshold: str) -> list[Finding]:
        return [f for f in self.findings if at_or_above(f.severity, threshold)]

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for f in self.findings if f.severity == s) for s in SEVERITIES}

    def to_dict(self) -> dict[str, Any]:
        return {
            "targets": self.targets,
            "ports": self.ports,
            "started": self.started,
            "finished": self.finished,
            "summary": {
                "endpoints_probed": len(self.endpoints),
                "endpoints_open": self.reachable,
                "findings": self.counts(),
            },
            "findings": [f.to_dict() for f in self.findings],
            "endpoints": [e.to_dict() for e in self.endpoints if e.state != "closed"],
            "errors": self.errors,
        }

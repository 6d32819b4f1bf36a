"""What an endpoint's HTTP answers reveal: the findings read from the read-only GETs that probes.py sends."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raywarden.scan.cves import cve_findings, parse_version
from raywarden.scan.findings import EndpointReport, Finding, finding
from raywarden.scan.targets import Endpoint
from raywarden.scan.wire import HttpResponse, TlsInfo

P_VERSION = "/api/version"
P_AUTH_MODE = "/api/authentication_mode"
P_JOBS = "/api/jobs/"
P_METRICS = "/metrics"
P_SERVE_ROUTES = "/-/routes"
# A job id that cannot exist: the agent only looks it up. An open agent answers 404 "does not
# exist"; with token auth it answers 401 before any lookup.
P_AGENT = "/api/job_agent/jobs/raywarden-scan-probe/logs"
# Order matters only for readability of the evidence; every request is an independent GET.
HTTP_PATHS = (P_VERSION, P_AUTH_MODE, P_JOBS, P_METRICS, P_SERVE_ROUTES, P_AGENT)

GATEWAY_HEADER = "x-raywarden-gateway"
# Ray's token middleware answers these texts (ray/_private/authentication/http_token_authentication.py).
RAY_TOKEN_401 = b"Unauthorized: Missing authentication token"
RAY_TOKEN_403 = b"Forbidden: Invalid authentication token"
AUTH_MODE_MIN_RAY = "2.52.0"


@dataclass
class EndpointOutcome:
    report: EndpointReport
    findings: list[Finding] = field(default_factory=list)


def _clean(value: object, limit: int = 80) -> str:
    """Server-chosen text, made safe to print: no control characters (terminal escapes), bounded length."""
    text = "".join(ch if ch.isprintable() else "?" for ch in str(value))
    return text if len(text) <= limit else text[:limit] + "..."


def _json(resp: HttpResponse | None) -> Any:
    if resp is None or resp.truncated or not resp.body:
        return None
    try:
        return json.loads(resp.body)
    except ValueError:
        return None


def _line(path: str, resp: HttpResponse | None) -> str:
    if resp is None:
        return f"GET {path} -> no answer"
    kind = f" {resp.content_type}" if resp.content_type else ""
    return f"GET {path} -> {resp.status}{kind}"


def analyse_http(
    ep: Endpoint, target: str, tls: TlsInfo, responses: dict[str, HttpResponse | None], out: EndpointOutcome
) -> None:
    report = out.report
    found = out.findings

    def add(rule_id: str, evidence: str, **kwargs: Any) -> None:
        found.append(finding(rule_id, target, evidence, host=ep.host, port=ep.port, **kwargs))

    version_resp = responses[P_VERSION]
    mode_resp = responses[P_AUTH_MODE]
    jobs_resp = responses[P_JOBS]
    agent_resp = responses[P_AGENT]

    gateway = next(
        (
            (path, r)
            for path, r in responses.items()
            if r is not None and r.headers.get(GATEWAY_HEADER) == "1" and r.status == 401
        ),
        None,
    )
    version_doc = _json(version_resp)
    ray_version = (
        _clean(version_doc["ray_version"])
        if version_resp is not None
        and version_resp.status == 200
        and isinstance(version_doc, dict)
        and "ray_version" in version_doc
        else None
    )
    mode_doc = _json(mode_resp)
    auth_mode = (
        _clean(mode_doc["authentication_mode"])
        if mode_resp is not None
        and mode_resp.status == 200
        and isinstance(mode_doc, dict)
        and "authentication_mode" in mode_doc
        else None
    )
    token_refusals = [
        (path, r)
        for path, r in responses.items()
        if r is not None and r.status in (401, 403) and r.body.startswith((RAY_TOKEN_401, RAY_TOKEN_403))
    ]
    agent_open = agent_resp is not None and agent_resp.status == 404 and b"does not exist" in agent_resp.body
    ray_http = ray_version is not None or auth_mode is not None or bool(token_refusals) or agent_open

    if gateway is not None:
        report.service = "raywarden-gateway"
        path, resp = gateway
        body = _json(resp)
        shape = "JSON {error, hint}" if isinstance(body, dict) and "error" in body else "non-JSON body"
        add("RW-GATEWAY", f"GET {path} -> 401 with X-Raywarden-Gateway: 1 and a {shape}")
    elif ray_version is not None or auth_mode is not None:
        report.service = "ray-dashboard"
    elif agent_open:
        report.service = "ray-dashboard-agent"
    elif token_refusals:
        report.service = "ray-http (token auth)"

    # The critical check runs whatever the service claims to be: a gateway that lets this through is broken.
    jobs_doc = _json(jobs_resp)
    if jobs_resp is not None and jobs_resp.status == 200:
        if isinstance(jobs_doc, list):
            add(
                "RW-JOBS-UNAUTH",
                f"{_line(P_JOBS, jobs_resp)} (a list of {len(jobs_doc)} jobs) with no credentials sent",
                cves=("CVE-2023-48022",),
            )
        elif jobs_resp.truncated and jobs_resp.content_type == "application/json" and ray_http:
            add(
                "RW-JOBS-UNAUTH",
                f"{_line(P_JOBS, jobs_resp)} (over 1 MiB, not parsed) with no credentials sent",
                cves=("CVE-2023-48022",),
            )
    if agent_open and agent_resp is not None:
        add(
            "RW-AGENT-UNAUTH",
            f'{_line(P_AGENT, agent_resp)} ("does not exist": the lookup ran) with no credentials sent',
            cves=("CVE-2023-48022",),
        )

    if ray_version is not None and version_resp is not None:
        commit = version_doc.get("ray_commit") if isinstance(version_doc, dict) else None
        add(
            "RW-RAY-VERSION",
            f"{_line(P_VERSION, version_resp)}: ray_version {ray_version}"
            + (f", commit {_clean(commit)}" if commit else ""),
        )
        found.extend(cve_findings(ray_version, target, host=ep.host, port=ep.port))

    if gateway is None:
        _auth_findings(ray_version, auth_mode, mode_resp, token_refusals, ray_http, add)

    if report.service in ("raywarden-gateway", "ray-dashboard", "ray-dashboard-agent", "ray-http (token auth)"):
        if tls.tls:
            verified = {
                True: "certificate verified against --ca",
                False: f"certificate NOT verified against --ca ({tls.verify_error})",
                None: "certificate not verified",
            }[tls.verified]
            add("RW-HTTP-TLS", f"TLS handshake completed ({tls.version}, {tls.cipher}); {verified}")
            if tls.verified is False:
                add("RW-TLS-UNTRUSTED", f"verification against --ca failed: {tls.verify_error}")
        else:
            add("RW-DASH-NO-TLS", f"{_line(P_VERSION, version_resp)} over plaintext HTTP (no TLS handshake)")

    _metrics_and_serve(responses, report, add)


def _auth_findings(
    ray_version: str | None,
    auth_mode: str | None,
    mode_resp: HttpResponse | None,
    token_refusals: list[tuple[str, HttpResponse]],
    ray_http: bool,
    add: Callable[..., None],
) -> None:
    if not ray_http:
        return
    if auth_mode == "token" or (auth_mode is None and token_refusals):
        refused = ", ".join(f"{p} ({r.status})" for p, r in token_refusals if p in (P_VERSION, P_JOBS))
        mode = f": authentication_mode {auth_mode!r}" if auth_mode else ""
        add("RW-TOKEN-AUTH-ON", f"{_line(P_AUTH_MODE, mode_resp)}{mode}; refused without a token: {refused or 'n/a'}")
    elif auth_mode is not None and auth_mode != "token":
        add("RW-TOKEN-AUTH-OFF", f"{_line(P_AUTH_MODE, mode_resp)}: authentication_mode {auth_mode!r}")
    elif ray_version is not None:
        key, minimum = parse_version(ray_version), parse_version(AUTH_MODE_MIN_RAY)
        if key is not None and minimum is not None and key < minimum:
            add(
                "RW-TOKEN-AUTH-OFF",
                f"ray_version {ray_version} predates token auth (added in "
                f"{AUTH_MODE_MIN_RAY}); GET {P_AUTH_MODE} -> "
                f"{mode_resp.status if mode_resp is not None else 'no answer'}",
            )


def _metrics_and_serve(
    responses: dict[str, HttpResponse | None], report: EndpointReport, add: Callable[..., None]
) -> None:
    metrics = responses[P_METRICS]
    if (
        metrics is not None
        and metrics.status == 200
        and metrics.content_type in ("text/plain", "application/openmetrics-text")
        and (b"# TYPE " in metrics.body or b"# HELP " in metrics.body)
    ):
        families = metrics.body.count(b"# TYPE ")
        more = "+" if metrics.truncated else ""
        add(
            "RW-METRICS-OPEN",
            f"{_line(P_METRICS, metrics)}: Prometheus text exposition, {families}{more} metric families",
        )
        if report.service == "unknown":
            report.service = "prometheus-metrics"
    routes = responses[P_SERVE_ROUTES]
    routes_doc = _json(routes)
    if routes is not None and routes.status == 200 and isinstance(routes_doc, dict):
        add("RW-SERVE-OPEN", f"{_line(P_SERVE_ROUTES, routes)}: {len(routes_doc)} Serve route(s) listed")
        if report.service == "unknown":
            report.service = "ray-serve"
    if report.service == "unknown":
        report.service = "http"

"""Probe one endpoint with read-only requests (TCP, TLS, HTTP/1.x, HTTP/2) and report what it answered; the HTTP
answers are read into findings by http_answers.py."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from raywarden.scan.findings import EndpointReport, Finding, finding
from raywarden.scan.http_answers import HTTP_PATHS, P_VERSION, EndpointOutcome, analyse_http
from raywarden.scan.targets import Endpoint
from raywarden.scan.wire import (
    ClientCertRequiredError,
    HttpResponse,
    NotHttpError,
    TlsInfo,
    h2_settings_probe,
    http_get,
    is_h2_settings,
    tcp_open,
    tls_probe,
)


@dataclass(frozen=True)
class ProbeOptions:
    timeout: float = 3.0
    ca: Path | None = None


def _sni(host: str) -> str | None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return None  # RFC 6066 section 3: IP literals are not sent as server names


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc.strerror})"
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer before the timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return f"{type(exc).__name__}: {exc}"


async def probe_endpoint(ep: Endpoint, opts: ProbeOptions) -> EndpointOutcome:
    """Run every probe against one endpoint. Never raises for network trouble; it is reported instead."""
    report = EndpointReport(host=ep.host, port=ep.port, target=ep.target)
    out = EndpointOutcome(report)
    try:
        await tcp_open(ep.host, ep.port, opts.timeout)
    except socket.gaierror as exc:
        report.state, report.detail = "error", _describe_error(exc)
        return out
    except (OSError, asyncio.TimeoutError) as exc:
        report.detail = _describe_error(exc)
        return out
    report.state = "open"
    report.requests.append("TCP connect: accepted")

    sni = _sni(ep.host)
    if ep.scheme == "http":
        tls = TlsInfo(tls=False)
    else:
        tls = await tls_probe(ep.host, ep.port, opts.timeout, sni=sni, ca=opts.ca)
        report.requests.append(
            "TLS ClientHello (ALPN h2,http/1.1; no client certificate): "
            + (f"{tls.version} alpn={tls.alpn}" if tls.tls and not tls.error else f"failed ({tls.error})")
        )
    report.tls = tls.tls
    target = ep.url(tls=tls.tls)

    if tls.tls and tls.error:
        if tls.client_cert_required:
            report.service = "tls (client certificate required)"
            out.findings.append(_cert_required(ep, target, f"TLS handshake aborted: {tls.error}"))
        else:
            report.service, report.detail = "tls", f"TLS handshake failed: {tls.error}"
        return out

    if tls.tls and tls.alpn == "h2":
        await _probe_grpc(ep, opts, tls, sni, out)
        return out

    try:
        first = await http_get(
            ep.host, ep.port, ep.netloc, ep.base_path + P_VERSION, tls=tls.tls, timeout=opts.timeout, sni=sni
        )
    except NotHttpError as exc:
        report.requests.append(f"GET {P_VERSION}: not an HTTP/1.x answer")
        if is_h2_settings(exc.first) or not exc.first:
            await _probe_grpc(ep, opts, tls, sni, out)
        else:
            report.service, report.detail = "unknown", "answers, but not with HTTP/1.x or HTTP/2"
        return out
    except ClientCertRequiredError as exc:
        report.service = "tls (client certificate required)"
        out.findings.append(_cert_required(ep, target, f"GET {P_VERSION} over TLS: server sent alert {exc}"))
        return out
    except (OSError, asyncio.TimeoutError) as exc:
        report.service, report.detail = "unknown", f"GET {P_VERSION}: {_describe_error(exc)}"
        return out

    responses: dict[str, HttpResponse | None] = {P_VERSION: first}
    for path in HTTP_PATHS[1:]:
        try:
            responses[path] = await http_get(
                ep.host, ep.port, ep.netloc, ep.base_path + path, tls=tls.tls, timeout=opts.timeout, sni=sni
            )
        except (NotHttpError, ClientCertRequiredError, OSError, asyncio.TimeoutError) as exc:
            responses[path] = None
            report.requests.append(f"GET {path}: {_describe_error(exc)}")
    for path, resp in responses.items():
        if resp is not None:
            report.requests.append(f"GET {path}: {resp.status}")
    analyse_http(ep, target, tls, responses, out)
    return out


def _cert_required(ep: Endpoint, target: str, evidence: str) -> Finding:
    return finding("RW-TLS-CLIENT-CERT-REQUIRED", target, evidence, host=ep.host, port=ep.port)


async def _probe_grpc(ep: Endpoint, opts: ProbeOptions, tls: TlsInfo, sni: str | None, out: EndpointOutcome) -> None:
    report = out.report
    target = f"{'grpcs' if tls.tls else 'grpc'}://{ep.netloc}"
    try:
        frame = await h2_settings_probe(ep.host, ep.port, tls=tls.tls, timeout=opts.timeout, sni=sni)
    except ClientCertRequiredError as exc:
        report.service = "grpc (client certificate required)"
        report.requests.append(f"HTTP/2 preface over TLS: alert {exc}")
        out.findings.append(
            _cert_required(
                ep,
                target,
                f"TLS completed without a client certificate, then the server sent alert {exc} "
                "in answer to the HTTP/2 preface",
            )
        )
        return
    except (ConnectionError, ssl.SSLEOFError) as exc:
        if tls.tls:
            _hung_up_after_tls(ep, target, tls, f"{type(exc).__name__}", out)
        else:
            report.service, report.detail = "unknown", f"HTTP/2 preface: {_describe_error(exc)}"
        return
    except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
        report.service, report.detail = "unknown", f"HTTP/2 preface: {_describe_error(exc)}"
        return
    report.requests.append(f"HTTP/2 preface + empty SETTINGS: first frame {frame.hex() or 'none'}")
    if not frame and tls.tls:
        _hung_up_after_tls(ep, target, tls, "connection closed", out)
        return
    if not is_h2_settings(frame):
        report.service, report.detail = "unknown", "no HTTP/2 SETTINGS frame in answer to the preface"
        return
    report.service = "grpc"
    if tls.tls:
        out.findings.append(
            finding(
                "RW-GRPC-TLS-NO-CLIENT-CERT",
                target,
                f"TLS handshake ({tls.version}, ALPN {tls.alpn}) completed without a client certificate; the "
                f"HTTP/2 preface was answered with a SETTINGS frame ({frame.hex()})",
                host=ep.host,
                port=ep.port,
            )
        )
    else:
        out.findings.append(
            finding(
                "RW-GRPC-PLAINTEXT",
                target,
                f"cleartext HTTP/2 preface answered with a SETTINGS frame ({frame.hex()}); no RPC was sent",
                host=ep.host,
                port=ep.port,
            )
        )


def _hung_up_after_tls(ep: Endpoint, target: str, tls: TlsInfo, how: str, out: EndpointOutcome) -> None:
    # TLS 1.3 lets the client finish its handshake before the server checks the client's certificate,
    # and gRPC servers then drop the connection without an alert. A gRPC server that accepted the
    # client always sends SETTINGS first (RFC 9113 section 3.4), so a silent hang-up means refusal.
    out.report.service = "grpc (client certificate required)"
    out.report.requests.append(f"HTTP/2 preface over TLS: {how}, no SETTINGS frame")
    out.findings.append(
        _cert_required(
            ep,
            target,
            f"TLS ({tls.version}, ALPN {tls.alpn}) completed without a client certificate, then the server "
            f"hung up ({how}) instead of sending HTTP/2 SETTINGS: it requires a client certificate",
        )
    )

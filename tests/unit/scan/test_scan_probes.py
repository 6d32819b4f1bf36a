"""What goes on the wire, and how answers become findings (no network beyond a loopback fake)."""

from __future__ import annotations

import asyncio
import json

import pytest

from raywarden.scan.findings import EndpointReport
from raywarden.scan.http_answers import (
    HTTP_PATHS,
    P_AGENT,
    P_AUTH_MODE,
    P_JOBS,
    P_METRICS,
    P_SERVE_ROUTES,
    P_VERSION,
    EndpointOutcome,
    analyse_http,
)
from raywarden.scan.probes import ProbeOptions, probe_endpoint
from raywarden.scan.targets import Endpoint
from raywarden.scan.wire import (
    USER_AGENT,
    HttpResponse,
    NotHttpError,
    TlsInfo,
    is_h2_settings,
    parse_response,
    request_bytes,
)

pytestmark = pytest.mark.unit

EP = Endpoint("10.0.0.1", 8265, target="10.0.0.1")
PLAIN = TlsInfo(tls=False)


def test_request_is_exactly_a_bare_get() -> None:
    raw = request_bytes("[::1]:8265", "/api/jobs/")
    assert raw == (
        b"GET /api/jobs/ HTTP/1.1\r\nHost: [::1]:8265\r\nUser-Agent: "
        + USER_AGENT.encode()
        + b"\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    assert not USER_AGENT.startswith("Mozilla")  # Ray treats Mozilla user agents as browsers


def test_parse_response_content_length_and_chunked() -> None:
    r = parse_response(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]extra", capped=False
    )
    assert (r.status, r.content_type, r.body, r.truncated) == (200, "application/json", b"[]", False)
    r = parse_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[1\r\n1\r\n]\r\n0\r\n\r\n", capped=False
    )
    assert (r.body, r.truncated) == (b"[1]", False)
    r = parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\nabc", capped=False)
    assert r.truncated
    with pytest.raises(NotHttpError):
        parse_response(b"\x00\x00\x18\x04\x00\x00\x00\x00\x00", capped=False)


def test_h2_settings_detection() -> None:
    assert is_h2_settings(bytes.fromhex("000018040000000000"))
    assert not is_h2_settings(bytes.fromhex("000018040000000001"))  # SETTINGS must be on stream 0
    assert not is_h2_settings(bytes.fromhex("000008070000000000"))  # GOAWAY
    assert not is_h2_settings(b"HTTP/1.1 ")


def _resp(
    status: int, body: object = b"", *, ctype: str = "application/json", headers: dict[str, str] | None = None
) -> HttpResponse:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HttpResponse(status, "", {"content-type": ctype, **(headers or {})}, data)


def _analyse(responses: dict[str, HttpResponse | None], tls: TlsInfo = PLAIN) -> list[tuple[str, str]]:
    full: dict[str, HttpResponse | None] = {p: _resp(404, b"404: Not Found", ctype="text/plain") for p in HTTP_PATHS}
    full.update(responses)
    out = EndpointOutcome(EndpointReport(EP.host, EP.port, EP.target))
    analyse_http(EP, EP.url(tls=tls.tls), tls, full, out)
    return sorted((f.id, f.severity) for f in out.findings)


def test_stock_ray_2_60() -> None:
    found = _analyse(
        {
            P_VERSION: _resp(200, {"ray_version": "2.60.0", "ray_commit": "abc"}),
            P_AUTH_MODE: _resp(200, {"authentication_mode": "disabled"}),
            P_JOBS: _resp(200, []),
        }
    )
    assert found == [
        ("RW-DASH-NO-TLS", "medium"),
        ("RW-JOBS-UNAUTH", "critical"),
        ("RW-RAY-VERSION", "info"),
        ("RW-TOKEN-AUTH-OFF", "high"),
    ]


def test_old_ray_gets_cves_and_auth_off_from_version() -> None:
    found = dict(_analyse({P_VERSION: _resp(200, {"ray_version": "2.8.0"}), P_JOBS: _resp(200, [{"a": 1}])}))
    assert found["RW-TOKEN-AUTH-OFF"] == "high"
    assert found["RW-CVE-2023-6019"] == "critical"
    assert "RW-CVE-2025-62593" in found and "RW-CVE-2023-48022" not in found


def test_ray_with_token_auth() -> None:
    refused = _resp(401, b"Unauthorized: Missing authentication token", ctype="text/plain")
    found = _analyse(
        {
            P_VERSION: refused,
            P_JOBS: refused,
            P_METRICS: refused,
            P_SERVE_ROUTES: refused,
            P_AGENT: refused,
            P_AUTH_MODE: _resp(200, {"authentication_mode": "token"}),
        }
    )
    assert found == [("RW-DASH-NO-TLS", "medium"), ("RW-TOKEN-AUTH-ON", "info")]


def test_gateway_over_tls_reports_nothing_above_info() -> None:
    denied = _resp(
        401, {"error": "authentication required", "hint": "run raywarden login"}, headers={"x-raywarden-gateway": "1"}
    )
    tls = TlsInfo(tls=True, version="TLSv1.3", alpn="http/1.1", cipher="TLS_AES_128_GCM_SHA256")
    found = _analyse(dict.fromkeys(HTTP_PATHS, denied), tls)
    assert found == [("RW-GATEWAY", "info"), ("RW-HTTP-TLS", "info")]


def test_gateway_that_leaks_the_jobs_api_is_still_critical() -> None:
    denied = _resp(401, {"error": "x", "hint": "y"}, headers={"x-raywarden-gateway": "1"})
    found = dict(
        _analyse({P_VERSION: denied, P_JOBS: _resp(200, [])}, TlsInfo(tls=True, version="TLSv1.3", cipher="x"))
    )
    assert found["RW-JOBS-UNAUTH"] == "critical" and found["RW-GATEWAY"] == "info"


def test_untrusted_certificate_with_ca() -> None:
    denied = _resp(401, {"error": "x"}, headers={"x-raywarden-gateway": "1"})
    tls = TlsInfo(tls=True, version="TLSv1.3", cipher="x", verified=False, verify_error="self-signed")
    assert ("RW-TLS-UNTRUSTED", "low") in _analyse({P_VERSION: denied}, tls)


def test_metrics_serve_and_agent() -> None:
    metrics = _resp(200, b"# HELP a b\n# TYPE a counter\na 1\n", ctype="text/plain")
    assert _analyse({P_METRICS: metrics}) == [("RW-METRICS-OPEN", "medium")]
    assert _analyse({P_SERVE_ROUTES: _resp(200, {"/": "app"})}) == [("RW-SERVE-OPEN", "medium")]
    agent = _resp(404, b"Job raywarden-scan-probe does not exist", ctype="text/plain")
    assert _analyse({P_AGENT: agent}) == [("RW-AGENT-UNAUTH", "critical"), ("RW-DASH-NO-TLS", "medium")]


def test_a_server_answering_everything_with_metrics_is_not_a_jobs_api() -> None:
    metrics = _resp(200, b"# TYPE a counter\na 1\n", ctype="text/plain")
    assert _analyse(dict.fromkeys(HTTP_PATHS, metrics)) == [("RW-METRICS-OPEN", "medium")]


def test_server_text_cannot_inject_control_characters() -> None:
    out = EndpointOutcome(EndpointReport(EP.host, EP.port, EP.target))
    full: dict[str, HttpResponse | None] = dict.fromkeys(HTTP_PATHS)
    full[P_VERSION] = _resp(200, {"ray_version": "2.60.0\x1b]8;;http://evil\x07"})
    analyse_http(EP, "http://x", PLAIN, full, out)
    assert all("\x1b" not in f.evidence for f in out.findings)


def test_probe_against_a_loopback_fake_gateway() -> None:
    """End to end over a real socket: exactly the documented GETs arrive, and a gateway is recognised."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:  # the reachability check connects and sends nothing
            writer.close()
            return
        seen.append(head)
        body = b'{"error": "authentication required", "hint": "raywarden login"}'
        writer.write(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nX-Raywarden-Gateway: 1\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main() -> EndpointOutcome:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await probe_endpoint(Endpoint("127.0.0.1", port, "http", "", "x"), ProbeOptions(timeout=2))
        finally:
            server.close()
            await server.wait_closed()

    outcome = asyncio.run(main())
    assert [f.id for f in outcome.findings] == ["RW-GATEWAY", "RW-DASH-NO-TLS"]
    paths = [h.split(b" ")[1].decode() for h in seen]
    assert paths == list(HTTP_PATHS)
    for head in seen:
        assert head.startswith(b"GET ")
        for forbidden in (b"Authorization", b"Cookie", b"Origin", b"Referer"):
            assert forbidden.lower() not in head.lower()

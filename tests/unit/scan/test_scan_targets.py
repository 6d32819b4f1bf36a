"""Target and port parsing: what the operator may type, and what is refused before any packet."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raywarden.scan.errors import ScanError
from raywarden.scan.targets import DEFAULT_PORTS, parse_ports, parse_target, plan_scan

pytestmark = pytest.mark.unit


def test_bare_host_uses_scan_ports() -> None:
    spec = parse_target("ray-head.example.com")
    assert spec.host == "ray-head.example.com" and spec.port is None and spec.scheme == "auto"
    assert [e.port for e in spec.endpoints(DEFAULT_PORTS)] == list(DEFAULT_PORTS)


def test_host_port() -> None:
    spec = parse_target("10.1.2.3:8265")
    assert (spec.host, spec.port) == ("10.1.2.3", 8265)
    assert [e.port for e in spec.endpoints([1, 2])] == [8265]


@pytest.mark.parametrize(
    ("text", "host", "port", "scheme", "base"),
    [
        ("http://10.0.0.1:8265", "10.0.0.1", 8265, "http", ""),
        ("https://ray.example.com", "ray.example.com", 443, "https", ""),
        ("http://ray.example.com", "ray.example.com", 80, "http", ""),
        ("https://gw.example.com:9443/ray/", "gw.example.com", 9443, "https", "/ray"),
        ("https://[::1]:8443", "::1", 8443, "https", ""),
    ],
)
def test_urls(text: str, host: str, port: int, scheme: str, base: str) -> None:
    spec = parse_target(text)
    assert (spec.host, spec.port, spec.scheme, spec.base_path) == (host, port, scheme, base)


def test_endpoint_url_brackets_ipv6() -> None:
    (ep,) = parse_target("[fe80::1]:8265").endpoints([])
    assert ep.netloc == "[fe80::1]:8265"
    assert ep.url("/api/version", tls=True) == "https://[fe80::1]:8265/api/version"


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("::1", "::1", None), ("[::1]", "::1", None), ("[2001:db8::5]:10001", "2001:db8::5", 10001)],
)
def test_ipv6(text: str, host: str, port: int | None) -> None:
    spec = parse_target(text)
    assert (spec.host, spec.port) == (host, port)


def test_cidr_counts_match_enumeration() -> None:
    for text in ("192.168.1.0/24", "10.0.0.0/31", "10.0.0.7/32", "2001:db8::/125", "::1/128"):
        spec = parse_target(text)
        assert spec.host_count == len(list(spec.hosts())), text
    assert parse_target("192.168.1.0/24").host_count == 254


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "foo bar",
        "host:",
        "host:0",
        "host:65536",
        "host:80:90",
        "host:http",
        "ftp://host",
        "http://",
        "http://user:pw@host:8265",
        "http://host:99999",
        "10.0.0.0/33",
        "10.0.0.0/24:8265",
        "[::1",
        "[::1]8265",
        "[zz::1]:1",
        "999.1.1.1",
        "1.2.3",
        "-bad.example.com",
        "bad_.example",
        "a..b",
        "::g",
    ],
)
def test_bad_targets_are_refused_with_a_hint(text: str) -> None:
    with pytest.raises(ScanError) as info:
        parse_target(text)
    assert info.value.exit_code == 2
    assert info.value.hint


def test_range_bound() -> None:
    assert plan_scan(["10.0.0.0/16"]).host_count == 65534
    with pytest.raises(ScanError, match="more than the limit"):
        plan_scan(["10.0.0.0/15"])
    assert plan_scan(["10.0.0.0/15"], max_hosts=1 << 17).host_count == (1 << 17) - 2
    # The bound covers the sum of all targets, not each one.
    with pytest.raises(ScanError):
        plan_scan(["10.0.0.0/24", "10.0.1.0/24"], max_hosts=300)


def test_plan_counts_and_dedupes() -> None:
    plan = plan_scan(["127.0.0.1", "127.0.0.1:8265", "127.0.0.1"], [8265, 6379])
    assert plan.endpoint_count == 5
    assert [(e.host, e.port) for e in plan.endpoints()] == [("127.0.0.1", 8265), ("127.0.0.1", 6379)]


def test_no_targets() -> None:
    with pytest.raises(ScanError):
        plan_scan([])


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        (["8265"], [8265]),
        (["8265,6379", "6379"], [8265, 6379]),
        (["9000-9002"], [9000, 9001, 9002]),
        (["default,44217"], [*DEFAULT_PORTS, 44217]),
    ],
)
def test_parse_ports(specs: list[str], expected: list[int]) -> None:
    assert parse_ports(specs) == expected


@pytest.mark.parametrize("spec", ["0", "65536", "x", "9002-9000", "1-70000", ",", "1-2000"])
def test_bad_ports(spec: str) -> None:
    with pytest.raises(ScanError):
        parse_ports([spec])


@given(st.ip_addresses(v=4), st.integers(min_value=1, max_value=65535))
def test_any_ipv4_host_port_round_trips(address: ipaddress.IPv4Address, port: int) -> None:
    spec = parse_target(f"{address}:{port}")
    assert (spec.host, spec.port) == (str(address), port)


@given(st.ip_addresses(v=6), st.integers(min_value=1, max_value=65535))
def test_any_ipv6_host_port_round_trips(address: ipaddress.IPv6Address, port: int) -> None:
    spec = parse_target(f"[{address}]:{port}")
    assert (spec.host, spec.port) == (str(address), port)

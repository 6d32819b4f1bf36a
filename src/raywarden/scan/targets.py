"""Parse what the operator typed (host, host:port, URL, CIDR range) into endpoints to probe."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from raywarden.scan.errors import ScanError

# Dashboard, GCS, Ray Client server, Serve HTTP proxy, dashboard agent. Ray's metrics export
# ports are random per node, so the operator names them with --ports.
DEFAULT_PORTS: tuple[int, ...] = (8265, 6379, 10001, 8000, 52365)
# A /16: beyond this a typo in a prefix length turns into a scan of someone else's network.
DEFAULT_MAX_HOSTS = 65536
MAX_PORTS = 1024

Scheme = Literal["auto", "http", "https"]

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_TARGET_HINT = "use HOST, HOST:PORT, [IPV6]:PORT, http(s)://HOST[:PORT][/PATH] or a CIDR range like 10.0.0.0/24"


@dataclass(frozen=True)
class Endpoint:
    """One host and port to probe; ``target`` is the operator's spelling it came from."""

    host: str
    port: int
    scheme: Scheme = "auto"
    base_path: str = ""
    target: str = ""

    @property
    def netloc(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def url(self, path: str = "", *, tls: bool) -> str:
        return f"{'https' if tls else 'http'}://{self.netloc}{self.base_path}{path}"


@dataclass(frozen=True)
class TargetSpec:
    """One parsed target: a single host, or a network range expanded lazily."""

    raw: str
    host: str | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    port: int | None = None
    scheme: Scheme = "auto"
    base_path: str = ""

    @property
    def host_count(self) -> int:
        if self.network is None:
            return 1
        return _network_host_count(self.network)

    def hosts(self) -> Iterator[str]:
        if self.network is not None:
            for address in self.network.hosts():
                yield str(address)
        elif self.host is not None:
            yield self.host

    def endpoints(self, ports: Iterable[int]) -> Iterator[Endpoint]:
        port_list = [self.port] if self.port is not None else list(ports)
        for host in self.hosts():
            for port in port_list:
                yield Endpoint(host, port, self.scheme, self.base_path, self.raw)


def _network_host_count(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> int:
    # Mirrors ipaddress.hosts(): IPv4 drops network and broadcast addresses except in /31 and /32
    # (RFC 3021); IPv6 drops only the Subnet-Router anycast address except in /127 and /128.
    n = network.num_addresses
    if network.version == 4:
        return n if network.prefixlen >= 31 else n - 2
    return n if network.prefixlen >= 127 else n - 1


def _bad(raw: str, why: str) -> ScanError:
    return ScanError(f"invalid target {raw!r}: {why}", hint=_TARGET_HINT)


def _parse_port(raw: str, text: str) -> int:
    if not text.isdigit():
        raise _bad(raw, f"port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise _bad(raw, f"port {port} is outside 1-65535")
    return port


def _check_host(raw: str, host: str) -> str:
    """Return ``host`` as an IP literal or a syntactically valid DNS name, else raise."""
    if not host:
        raise _bad(raw, "no host")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise _bad(raw, f"{host!r} is neither an IP address nor a valid host name")
    # All-numeric names would be looked up as numbers by some resolvers; only valid IPv4 is allowed.
    if all(label.isdigit() for label in labels):
        raise _bad(raw, f"{host!r} is not a valid IPv4 address")
    return host.lower()


def _parse_url(raw: str) -> TargetSpec:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https"):
        raise _bad(raw, f"scheme {parts.scheme!r} is not http or https")
    if parts.username is not None or parts.password is not None:
        # The scan never sends credentials; a URL carrying them is a mistake worth stopping on.
        raise ScanError(
            f"invalid target {raw!r}: the URL contains credentials",
            hint="remove user:password@ from the URL; raywarden scan sends no credentials",
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise _bad(raw, str(exc)) from None
    host = _check_host(raw, parts.hostname or "")
    scheme: Scheme = "https" if parts.scheme == "https" else "http"
    if port is None:
        port = 443 if scheme == "https" else 80
    elif port == 0:
        raise _bad(raw, "port 0 is not a port")
    return TargetSpec(raw=raw, host=host, port=port, scheme=scheme, base_path=parts.path.rstrip("/"))


def parse_target(text: str) -> TargetSpec:
    """Parse one target; raise ScanError with a hint on anything ambiguous or malformed."""
    raw = text.strip()
    if not raw:
        raise _bad(text, "empty")
    if any(ch.isspace() for ch in raw):
        raise _bad(raw, "contains whitespace")
    if "://" in raw:
        return _parse_url(raw)
    if "/" in raw:
        try:
            network = ipaddress.ip_network(raw, strict=False)
        except ValueError:
            raise _bad(raw, "not a valid CIDR range (ports go in --ports, not in a range)") from None
        return TargetSpec(raw=raw, network=network)
    if raw.startswith("["):
        host_part, sep, rest = raw[1:].partition("]")
        if not sep:
            raise _bad(raw, "missing ']'")
        try:
            host = str(ipaddress.IPv6Address(host_part))
        except ValueError:
            raise _bad(raw, f"{host_part!r} is not an IPv6 address") from None
        if not rest:
            return TargetSpec(raw=raw, host=host)
        if not rest.startswith(":"):
            raise _bad(raw, "expected ':PORT' after ']'")
        return TargetSpec(raw=raw, host=host, port=_parse_port(raw, rest[1:]))
    if raw.count(":") >= 2:
        try:
            return TargetSpec(raw=raw, host=str(ipaddress.IPv6Address(raw)))
        except ValueError:
            raise _bad(raw, "not an IPv6 address (write [IPV6]:PORT to give a port)") from None
    if ":" in raw:
        host_part, _, port_part = raw.partition(":")
        return TargetSpec(raw=raw, host=_check_host(raw, host_part), port=_parse_port(raw, port_part))
    return TargetSpec(raw=raw, host=_check_host(raw, raw))


def parse_ports(specs: Iterable[str]) -> list[int]:
    """Parse ``--ports`` values: comma-separated ports, ``A-B`` ranges, ``default`` for Ray's ports."""
    ports: list[int] = []
    for spec in specs:
        for item in spec.split(","):
            item = item.strip().lower()
            if not item:
                continue
            if item in ("default", "ray"):
                ports.extend(DEFAULT_PORTS)
                continue
            low_text, dash, high_text = item.partition("-")
            try:
                low = int(low_text)
                high = int(high_text) if dash else low
            except ValueError:
                raise ScanError(
                    f"invalid port {item!r}", hint="use e.g. --ports 8265,6379,44217 or --ports default,9000-9002"
                ) from None
            if not (1 <= low <= high <= 65535):
                raise ScanError(f"invalid port range {item!r}", hint="ports are 1-65535, ranges low-high")
            ports.extend(range(low, high + 1))
    unique = list(dict.fromkeys(ports))
    if not unique:
        raise ScanError("no ports given", hint="use e.g. --ports 8265 or leave --ports out for Ray's defaults")
    if len(unique) > MAX_PORTS:
        raise ScanError(
            f"{len(unique)} ports requested; at most {MAX_PORTS} per scan",
            hint="raywarden scan checks Ray's ports, it is not a port sweeper",
        )
    return unique


@dataclass(frozen=True)
class ScanPlan:
    """Parsed targets plus the port list, with the size of the scan known before it starts."""

    specs: tuple[TargetSpec, ...]
    ports: tuple[int, ...]

    @property
    def host_count(self) -> int:
        return sum(spec.host_count for spec in self.specs)

    @property
    def endpoint_count(self) -> int:
        return sum(spec.host_count * (1 if spec.port is not None else len(self.ports)) for spec in self.specs)

    def endpoints(self) -> Iterator[Endpoint]:
        seen: set[Endpoint] = set()
        for spec in self.specs:
            for endpoint in spec.endpoints(self.ports):
                key = Endpoint(endpoint.host, endpoint.port, endpoint.scheme, endpoint.base_path)
                if key not in seen:
                    seen.add(key)
                    yield endpoint


def plan_scan(
    targets: Iterable[str], ports: Iterable[int] | None = None, *, max_hosts: int = DEFAULT_MAX_HOSTS
) -> ScanPlan:
    """Parse every target and refuse the scan before any packet if it is larger than ``max_hosts``."""
    specs = tuple(parse_target(t) for t in targets)
    if not specs:
        raise ScanError("no targets given", hint=_TARGET_HINT)
    port_list = tuple(dict.fromkeys(ports)) if ports is not None else DEFAULT_PORTS
    if not port_list:
        raise ScanError("empty port list", hint="leave ports out for Ray's defaults")
    for port in port_list:
        if not 1 <= port <= 65535:
            raise ScanError(f"invalid port {port}", hint="ports are 1-65535")
    plan = ScanPlan(specs, port_list)
    if plan.host_count > max_hosts:
        raise ScanError(
            f"the targets cover {plan.host_count} hosts, more than the limit of {max_hosts}",
            hint="narrow the range, or raise the limit with --max-hosts if you mean it",
        )
    return plan

"""The Host allowlist: a DNS-rebinding page reaches the gateway under its own name, and is refused (421)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from raywarden.config import ClusterConfig
from raywarden.gateway.middleware import header
from raywarden.gateway.responses import Refusal


def gateway_host_names(config: ClusterConfig) -> frozenset[str]:
    """The names browsers may use for this gateway: loopback, the listen host and ``gateway_hosts``."""
    names = {"localhost", "127.0.0.1", "::1", config.listen.host, *config.gateway_hosts}
    names.discard("0.0.0.0")  # noqa: S104 - a wildcard listen address is not a name browsers use
    names.discard("::")
    return frozenset(n.lower().strip("[]") for n in names)


class HostMiddleware:
    def __init__(self, app: ASGIApp, config: ClusterConfig) -> None:
        self.app = app
        self.hosts = gateway_host_names(config)
        self.port = str(config.listen.port)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            self.check(header(scope, b"host"))
        await self.app(scope, receive, send)

    def check(self, host_header: str | None) -> None:
        if host_header is None:
            raise Refusal(400, "missing Host header", reason="request without a Host header", hint="send a Host header")
        value = host_header.strip().lower()
        if value.startswith("["):
            host, _, rest = value[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ("" if not rest else "bad")
        else:
            host, sep, port = value.rpartition(":")
            if not sep:
                host, port = value, ""
        # A Host without a port is tolerated (some probes and proxies omit it): rebinding is about the name.
        if host not in self.hosts or port not in (self.port, ""):
            raise Refusal(
                421,
                "this gateway does not serve that host name",
                reason=f"Host header {host_header[:100]!r} not in the gateway's host allowlist "
                "(DNS rebinding or misdirected request)",
                hint="use the gateway's own name; add others to gateway_hosts in the cluster config",
            )

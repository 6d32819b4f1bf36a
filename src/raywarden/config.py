"""The cluster configuration kept in the state dir's config.json, and the types of its fields."""

from __future__ import annotations

import datetime as dt
import ipaddress
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raywarden.durations import Duration, within
from raywarden.errors import ConfigError

DEFAULT_LISTEN = "127.0.0.1:8443"
DEFAULT_TRUST_DOMAIN = "raywarden.local"


class Listen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    host: str
    port: int = Field(ge=1, le=65535)

    @classmethod
    def parse(cls, text: str) -> Listen:
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"--listen {text!r} is not HOST:PORT", hint="for example 127.0.0.1:8443")
        host = host.strip("[]")
        try:
            return cls(host=host, port=int(port))
        except ValidationError:
            raise ConfigError(f"--listen {text!r}: port must be 1-65535", hint="for example 127.0.0.1:8443") from None

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def url_host(self) -> str:
        """The host a local client should dial: a wildcard listen address is reached via loopback."""
        if self.host in ("0.0.0.0", "::"):  # noqa: S104 - comparing, not binding
            return "127.0.0.1"
        return f"[{self.host}]" if ":" in self.host else self.host


# Certificate lifetimes short enough to watch renewal happen (2 minutes), and no longer than browsers accept
# for a server certificate (397 days). The head's certificate lives as long as the cluster is planned to
# (docs/credentials.md): it is renewed only when its Ray restarts.
MIN_CERT_TTL = "2m"
# Fields of releases before durations: old name -> (new name, seconds per unit of the old number).
LEGACY_LIFETIMES = {
    "user_cert_hours": ("user_cert_ttl", 3600),
    "gateway_cert_days": ("gateway_cert_ttl", 86400),
    "node_cert_days": ("node_cert_ttl", 86400),
}


class ServeLimit(BaseModel):
    """Requests per second with a burst, and requests at once, for Serve calls (0: no limit)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    rate: float = Field(ge=0, le=1e6)
    burst: int = Field(ge=0, le=10**7)
    concurrency: int = Field(ge=0, le=10**6)


class ServeAppLimits(BaseModel):
    """One application's overrides: of its own limit (``app``) and of each caller's limit on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    app: ServeLimit | None = None
    principal: ServeLimit | None = None


class ServeLimits(BaseModel):
    """Rate and concurrency limits of Serve calls (docs/serve.md), held across every gateway worker."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # Each principal's calls to one application.
    principal: ServeLimit = ServeLimit(rate=100, burst=200, concurrency=64)
    # All calls to one application.
    app: ServeLimit = ServeLimit(rate=1000, burst=2000, concurrency=512)
    apps: dict[str, ServeAppLimits] = Field(default_factory=dict)

    def for_app(self, name: str) -> tuple[ServeLimit, ServeLimit]:
        """(each principal's limit, the application's limit) for application ``name``."""
        override = self.apps.get(name)
        if override is None:
            return self.principal, self.app
        return override.principal or self.principal, override.app or self.app


class ClusterConfig(BaseModel):
    """Settings fixed at ``init`` and read by ``up``, the gateway and the CLI."""

    model_config = ConfigDict(extra="forbid")

    trust_domain: str = DEFAULT_TRUST_DOMAIN
    listen: Listen = Listen(host="127.0.0.1", port=8443)
    # Extra names the gateway certificate is valid for (DNS names or IP addresses), besides localhost.
    gateway_hosts: list[str] = Field(default_factory=list)
    # Lifetimes (docs/credentials.md). People's and service accounts' certificates; the gateway's, renewed in
    # place at 2/3 of its life; worker nodes', renewed with a rolling restart at 2/3; the head node's.
    user_cert_ttl: Annotated[Duration, within(MIN_CERT_TTL, "7d")] = dt.timedelta(hours=12)
    gateway_cert_ttl: Annotated[Duration, within(MIN_CERT_TTL, "397d")] = dt.timedelta(days=90)
    node_cert_ttl: Annotated[Duration, within(MIN_CERT_TTL, "397d")] = dt.timedelta(days=30)
    head_cert_ttl: Annotated[Duration, within("1d", "3660d")] = dt.timedelta(days=365)
    # How long a worker node being restarted for its new certificate lets running tasks finish (at most a
    # third of its certificate's life: the old certificate must still be valid when Ray stops).
    node_drain_timeout: Annotated[Duration, within("10s", "7d")] = dt.timedelta(minutes=10)
    ca_years: int = Field(default=10, ge=1, le=30)
    # Ray itself refuses packages above 100 MiB (ray_constants.GCS_STORAGE_MAX_SIZE); allow that plus framing.
    max_body_bytes: int = Field(default=101 * 1024 * 1024, ge=1024)
    upstream_timeout_s: float = Field(default=300.0, gt=0)
    # Answers the gateway filters (job lists, dashboard lists) are read whole up to this size; beyond it the
    # caller gets a 502 with a hint. Every other answer streams through without a limit.
    max_filtered_answer_bytes: int = Field(default=256 * 1024 * 1024, ge=64 * 1024)
    # Gateway worker processes sharing the listener; 0: one per core (docs/architecture.md, "Workers").
    gateway_workers: int = Field(default=0, ge=0, le=256)
    # Slow clients (docs/architecture.md, "Slow clients"): a request's headers must arrive within this many
    # seconds, its body must make progress at least this often, and each worker holds at most this many
    # connections (the longest idle one is closed to make room).
    gateway_header_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    gateway_body_idle_seconds: float = Field(default=60.0, gt=0, le=3600)
    gateway_max_connections: int = Field(default=1024, ge=1, le=100_000)
    audit_checkpoint_every: int = Field(default=1000, ge=1)
    audit_checkpoint_seconds: float = Field(default=10.0, gt=0)
    audit_rotate_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)
    # Identities: bearer token lifetimes, clock skew allowance, enrollment code lifetime.
    token_default_minutes: float = Field(default=15.0, gt=0)
    token_max_minutes: float = Field(default=12 * 60.0, gt=0, le=7 * 24 * 60)
    token_leeway_seconds: float = Field(default=30.0, ge=0, le=300)
    enrollment_code_hours: float = Field(default=24.0, gt=0, le=24 * 30)
    # Job limits the default policy pack applies to `developers` (Cedar: Cluster::"ray".developer_limits).
    developer_max_cpus: float = Field(default=4.0, ge=0, le=1e9)
    developer_max_gpus: float = Field(default=0.0, ge=0, le=1e9)
    developer_max_memory_bytes: int = Field(default=8 * 1024**3, ge=0, le=2**62)
    developer_resources: list[str] = Field(default_factory=list)
    developer_max_resource_amount: float = Field(default=0.0, ge=0, le=1e9)
    # Browser sessions (docs/browser.md): idle timeout, absolute lifetime, sign-in link lifetime.
    session_idle_minutes: float = Field(default=30.0, gt=0, le=24 * 60)
    session_max_hours: float = Field(default=8.0, gt=0, le=24)
    signin_link_seconds: float = Field(default=300.0, gt=0, le=3600)
    # `up` runs a loopback Prometheus for Ray's metrics pages when the `prometheus` command exists (docs/metrics.md).
    metrics: bool = True
    # Addresses or networks of reverse proxies in front of the gateway. Only connections from these may name
    # the client's address in X-Forwarded-For; by default no forwarded header is trusted (docs/architecture.md).
    trusted_proxies: list[str] = Field(default_factory=list)
    # Ray Serve's data path (docs/serve.md): the gateway's second HTTPS listener, in front of Serve's proxy on
    # loopback. None: `up` starts no Serve and the gateway opens no second listener.
    serve_listen: Listen | None = None
    serve_limits: ServeLimits = Field(default_factory=ServeLimits)
    # A Serve call's request body is read whole (at most this much) before it is forwarded.
    serve_max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, le=1024**3)
    # A Serve answer that sends nothing for this long is cut; no call lasts longer than the maximum.
    serve_idle_timeout_s: float = Field(default=300.0, gt=0)
    serve_max_duration_s: float = Field(default=3600.0, gt=0)

    # Privilege separation (docs/threat-model.md). The OS user Ray, and so every job, runs as; None: the control
    # plane's own user (no root to switch users). Recorded by `init` and `up` as root.
    ray_user: str | None = None
    # `up --shared-os-user`: without root, the operator accepted that Ray shares the control plane's user,
    # and with it that any job can read the control plane's keys. Only then may a second principal exist.
    shared_os_user: bool = False

    @property
    def separated(self) -> bool:
        """Ray runs as a user of its own: jobs cannot read or write the control plane's state."""
        return self.ray_user is not None

    @property
    def admits_principals(self) -> bool:
        """More than one principal may exist: jobs are separated from the control plane, or the operator
        accepted that they are not."""
        return self.separated or self.shared_os_user

    @model_validator(mode="before")
    @classmethod
    def _read_legacy_lifetimes(cls, data: Any) -> Any:
        """config.json from releases before durations: ``user_cert_hours``, ``gateway_cert_days`` and
        ``node_cert_days`` were numbers; they are read as the same durations."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for old, (new, unit_s) in LEGACY_LIFETIMES.items():
            if old not in data:
                continue
            if new in data:
                raise ValueError(f"{old} and {new} both set; keep {new} only")
            value = data.pop(old)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{old} must be a positive number")
            data[new] = dt.timedelta(seconds=round(float(value) * unit_s))
        return data

    @field_validator("trusted_proxies")
    @classmethod
    def _check_trusted_proxies(cls, value: list[str]) -> list[str]:
        # A wildcard would let any client choose the source address that audit records and policies see.
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies entry {entry!r} is not an IP address or network") from None
        return value

    @field_validator("trust_domain")
    @classmethod
    def _check_trust_domain(cls, value: str) -> str:
        # SPIFFE trust domains: lowercase letters, digits, dots, dashes and underscores only.
        allowed = set("abcdefghijklmnopqrstuvwxyz0123456789.-_")
        if not value or set(value) - allowed or value.startswith(".") or value.endswith("."):
            raise ValueError("a trust domain uses lowercase letters, digits, '.', '-' and '_' only")
        return value

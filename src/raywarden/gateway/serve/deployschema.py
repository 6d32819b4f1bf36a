"""A Serve deploy request, parsed once and bounded: the applications it asks for and the settings the gateway
keeps fixed. The body Ray receives is re-serialised from what was parsed here.

The field names are those of ``ray.serve.schema`` (ServeDeploySchema, ServeApplicationSchema, DeploymentSchema,
RayActorOptionsSchema; a unit test keeps them equal), without importing Serve into the gateway. Unknown fields
are refused: Serve would silently drop them. Values the gateway does not read are Ray's to validate.

Serve's listener belongs to raywarden (docs/serve.md): ``http_options``, ``grpc_options`` and
``proxy_location`` are accepted only when absent, equal to the defaults `serve build` writes, or equal to the
pinned values, and are then replaced by the pinned values. ``controller_options``, ``tracing_config``,
top-level ``logging_config`` and ``target_capacity`` reach the controller and every application, so they are
refused.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raywarden.gateway.bodies import BadBody, load_json

HINT = "send Serve's deploy config (`serve build` output); see docs/serve.md for what the gateway accepts"
# Route prefixes: plain segments of unreserved characters; no dot segments, no trailing '/' (Serve's own rule).
ROUTE_PREFIX = re.compile(r"/|(/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)+")
APP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
GROUP_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
# What `serve build` writes and stock `serve deploy` sends when the config says nothing.
BUILD_HTTP_DEFAULTS = {"host": "0.0.0.0", "port": 8000}  # noqa: S104 - a value Serve's CLI sends, not a bind
BUILD_GRPC_DEFAULT_PORT = 9000
REFUSED_SETTINGS = ("controller_options", "tracing_config", "logging_config", "target_capacity")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RayActorOptions(_Strict):
    runtime_env: dict[str, Any] | None = None
    num_cpus: float | None = Field(default=None, ge=0)
    num_gpus: float | None = Field(default=None, ge=0)
    memory: float | None = Field(default=None, ge=0)
    resources: dict[str, float] | None = None
    accelerator_type: str | None = None
    label_selector: dict[str, str] | None = None
    fallback_strategy: list[dict[str, Any]] | None = None


class Deployment(_Strict):
    name: str = Field(min_length=1, max_length=256)
    num_replicas: int | str | None = None
    max_ongoing_requests: Any = None
    max_queued_requests: Any = None
    backpressure_config: Any = None
    user_config: Any = None
    autoscaling_config: dict[str, Any] | None = None
    graceful_shutdown_wait_loop_s: Any = None
    graceful_shutdown_timeout_s: Any = None
    health_check_period_s: Any = None
    health_check_timeout_s: Any = None
    ray_actor_options: RayActorOptions | None = None
    placement_group_bundles: list[dict[str, float]] | None = None
    placement_group_strategy: Any = None
    placement_group_bundle_label_selector: Any = None
    max_replicas_per_node: Any = None
    logging_config: Any = None
    request_router_config: Any = None
    gang_scheduling_config: Any = None
    deployment_actors: list[dict[str, Any]] | None = None
    rolling_update_percentage: Any = None
    max_surge_percent: Any = None


class Application(_Strict):
    name: str = "default"
    route_prefix: str | None = "/"
    import_path: str = Field(min_length=1, max_length=1024)
    runtime_env: dict[str, Any] | None = None
    host: Any = None
    port: Any = None
    deployments: list[Deployment] | None = None
    autoscaling_policy: dict[str, Any] | None = None
    args: dict[str, Any] | None = None
    logging_config: Any = None
    external_scaler_enabled: bool | None = None

    def config(self) -> dict[str, Any]:
        """The application as it is forwarded: the fields the caller set, as parsed."""
        return self.model_dump(mode="json", exclude_unset=True)


class AppGrants(_Strict):
    invoke_groups: list[str] = Field(default_factory=list, max_length=64)


class RaywardenBlock(_Strict):
    """raywarden's own settings in a deploy config (never sent to Ray): who may call each application."""

    apps: dict[str, AppGrants] = Field(default_factory=dict)


class DeployBody(_Strict):
    proxy_location: Any = None
    http_options: dict[str, Any] | None = None
    grpc_options: dict[str, Any] | None = None
    controller_options: Any = None
    logging_config: Any = None
    tracing_config: Any = None
    target_capacity: Any = None
    applications: list[Application] = Field(default_factory=list, max_length=256)
    raywarden: RaywardenBlock | None = None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise BadBody(f"the key {key[:64]!r} appears twice in one object", HINT)
        seen[key] = value
    return seen


def parse_deploy(body: bytes, pinned_http: dict[str, Any]) -> tuple[DeployBody, list[str]]:
    """The parsed request and the settings it gave that the pinned ones replace (for the audit record).
    Raises BadBody (400) with a hint."""
    load_json(body or b"{}", what="deploy config")  # size, depth and number bounds first
    data = json.loads(body or b"{}", object_pairs_hook=_no_duplicate_keys)
    if not isinstance(data, dict):
        raise BadBody("the deploy config must be a JSON object", HINT)
    try:
        parsed = DeployBody.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadBody(f"deploy config: {where}: {first['msg']}", HINT) from None
    for name in REFUSED_SETTINGS:
        if getattr(parsed, name) is not None:
            raise BadBody(
                f"{name} is not accepted through the gateway: it reaches Serve's controller or every application",
                "remove it from the config (docs/serve.md)",
            )
    replaced = _check_settings(parsed, pinned_http)
    _check_apps(parsed)
    return parsed, replaced


def _check_settings(parsed: DeployBody, pinned_http: dict[str, Any]) -> list[str]:
    hint = "raywarden fixes Serve's listener on loopback: remove http_options, grpc_options and proxy_location"
    replaced = []
    if parsed.proxy_location is not None:
        if parsed.proxy_location not in ("EveryNode", "HeadOnly"):
            raise BadBody(f"proxy_location {str(parsed.proxy_location)[:40]!r} is not accepted", hint)
        replaced.append("proxy_location")
    if parsed.http_options is not None:
        given = {k: v for k, v in parsed.http_options.items() if v is not None}
        if given and given != BUILD_HTTP_DEFAULTS and given != pinned_http:
            raise BadBody("http_options other than Serve's defaults are not accepted", hint)
        replaced.append("http_options")
    if parsed.grpc_options is not None:
        grpc = parsed.grpc_options
        if grpc.get("grpc_servicer_functions") or set(grpc) - {"port", "grpc_servicer_functions"}:
            raise BadBody("Serve's gRPC proxy is not offered through the gateway", hint)
        if grpc.get("port") not in (None, BUILD_GRPC_DEFAULT_PORT):
            raise BadBody("grpc_options other than Serve's defaults are not accepted", hint)
        replaced.append("grpc_options")
    return replaced


def _check_apps(parsed: DeployBody) -> None:
    names: set[str] = set()
    prefixes: set[str] = set()
    for app in parsed.applications:
        if not APP_NAME.fullmatch(app.name):
            raise BadBody(
                f"application name {app.name[:64]!r} is not accepted",
                "use letters, digits, '_', '-' and '.', starting with a letter or digit",
            )
        if app.name in names:
            raise BadBody(f"application {app.name!r} appears twice", "give each application once")
        names.add(app.name)
        if app.host is not None or app.port is not None:
            raise BadBody(f"application {app.name!r}: host and port are not accepted", "remove them")
        prefix = app.route_prefix
        if prefix is not None:
            if not ROUTE_PREFIX.fullmatch(prefix):
                raise BadBody(
                    f"application {app.name!r}: route prefix {prefix[:80]!r} is not accepted",
                    "a route prefix is '/' or '/' followed by plain segments (letters, digits, '_', '-', '.', '~'), "
                    "without '.' or '..' segments and without a trailing '/'",
                )
            if prefix in prefixes:
                raise BadBody(f"route prefix {prefix!r} is given to two applications", "give each its own prefix")
            prefixes.add(prefix)
    if parsed.raywarden is not None:
        for name, grants in parsed.raywarden.apps.items():
            if name not in names:
                raise BadBody(f"raywarden.apps names {name[:64]!r}, which the config does not deploy", HINT)
            for group in grants.invoke_groups:
                if not GROUP_NAME.fullmatch(group):
                    raise BadBody(f"group name {group[:64]!r} is not accepted", "group names are lowercase")

"""The route table: the whole attack surface of the gateway, in one place.

Every request is matched here after path canonicalisation. A method and path not listed is refused;
a query parameter not listed for its route is refused. Each route names the Cedar action that
authorizes it (raywarden/policy/schema.cedarschema declares the same actions).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

ResourceKind = Literal["cluster", "new_job", "job", "package", "control"]
BodyKind = Literal["none", "job_submit", "package", "json", "form"]
# "identity": the caller must authenticate (certificate or bearer) and a policy must permit the action.
# "anonymous": raywarden's own enrollment endpoints, where the credential is in the body (a one-time code
# or join token) and the handler verifies it; also the console's sign-in and sign-out pages (gateway/web), which
# read the session cookie themselves.
AuthKind = Literal["identity", "anonymous"]

# Ray submission ids are "raysubmit_<random>" or user-chosen; job ids are hex. Neither needs more.
_SEGMENT = {
    "job_id": r"[A-Za-z0-9][A-Za-z0-9_\-.]{0,127}",
    "protocol": r"gcs",
    "package_name": r"_ray_pkg_[A-Za-z0-9_\-.]{1,128}\.zip",
    # The dashboard's built assets: one folder level, plain file names; no source maps (*.map).
    "static_path": r"(?:js|css|media)/[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*\.(?:js|css|svg|woff2?|ttf|eot|png|txt)",
    "node_id": r"[0-9a-f]{8,128}",
    "actor_id": r"[0-9a-f]{8,128}",
    "app_name": r"[A-Za-z0-9_\-.]{1,128}",
    "deployment_name": r"[A-Za-z0-9_\-.]{1,128}",
    # Ray's Grafana dashboards, as the metrics panels name them (gateway/metrics).
    "dashboard_uid": r"[A-Za-z0-9_\-]{1,64}",
    "dashboard_slug": r"[a-z0-9\-]{0,64}",
}
# Where the Ray dashboard is served; the gateway strips this prefix before forwarding to Ray.
DASHBOARD_MOUNT = "/dashboard"


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    action: str
    resource: ResourceKind
    body: BodyKind = "none"
    websocket: bool = False
    query: frozenset[str] = field(default_factory=frozenset)
    auth: AuthKind = "identity"
    # False for raywarden's own control API, answered by the gateway itself (gateway/control/).
    upstream: bool = True
    # Body size limit for this route; None means the cluster's max_body_bytes (sized for packages).
    max_body: int | None = None
    # True: a browser session cookie authenticates this route (dashboard and console); elsewhere it is ignored.
    session: bool = False
    # True: answered by the console (gateway/web), not by Ray or the control API.
    console: bool = False
    # Path prefix the route is served under ("" or DASHBOARD_MOUNT; the template includes it); stripped
    # before forwarding to Ray.
    mount: str = ""
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern = re.sub(r"\{(\w+)\}", lambda m: f"(?P<{m[1]}>{_SEGMENT[m[1]]})", self.template)
        object.__setattr__(self, "regex", re.compile(f"^{pattern}$"))

    def upstream_path(self, path: str) -> str:
        """The path Ray sees: the matched path without the mount prefix."""
        return path[len(self.mount) :] or "/"

    @property
    def ray_template(self) -> str:
        """The route's template as Ray knows it (without the mount prefix)."""
        return self.upstream_path(self.template)


RAY_ROUTES: tuple[Route, ...] = (
    Route("GET", "/api/version", "cluster.version", "cluster"),
    Route("GET", "/api/jobs/", "jobs.list", "cluster"),
    Route("POST", "/api/jobs/", "jobs.submit", "new_job", body="job_submit"),
    Route("GET", "/api/jobs/{job_id}", "jobs.read", "job"),
    Route("DELETE", "/api/jobs/{job_id}", "jobs.delete", "job"),
    Route("POST", "/api/jobs/{job_id}/stop", "jobs.stop", "job"),
    Route("GET", "/api/jobs/{job_id}/logs", "jobs.logs", "job"),
    Route("GET", "/api/jobs/{job_id}/logs/tail", "jobs.logs_tail", "job", websocket=True),
    Route("GET", "/api/packages/{protocol}/{package_name}", "packages.read", "package"),
    Route("PUT", "/api/packages/{protocol}/{package_name}", "packages.upload", "package", body="package"),
)

# raywarden's own API. Every action here has a handler in raywarden.gateway.control.
CONTROL_JSON_LIMIT = 64 * 1024  # CSRs, codes and tokens are small; anonymous callers get no more than this


def _control(method: str, template: str, action: str, *, anonymous: bool, json_body: bool = True) -> Route:
    return Route(
        method,
        template,
        action,
        "control" if anonymous else "cluster",
        body="json" if json_body else "none",
        auth="anonymous" if anonymous else "identity",
        upstream=False,
        max_body=CONTROL_JSON_LIMIT if json_body else None,
    )


CONTROL_ROUTES: tuple[Route, ...] = (
    _control("GET", "/raywarden/v1/ca", "raywarden.ca", anonymous=True, json_body=False),
    _control("POST", "/raywarden/v1/enroll", "identity.enroll", anonymous=True),
    _control("POST", "/raywarden/v1/renew", "identity.renew", anonymous=False),
    _control("POST", "/raywarden/v1/token", "identity.token", anonymous=False),
    _control("POST", "/raywarden/v1/nodes/join", "raywarden.node.join", anonymous=True),
    _control("POST", "/raywarden/v1/nodes/peers", "raywarden.node.peers", anonymous=True),
    _control("POST", "/raywarden/v1/nodes/leave", "raywarden.node.leave", anonymous=True),
    _control("POST", "/raywarden/v1/signin-link", "identity.signin_link", anonymous=False),
)

# Ray Serve's REST API for `serve deploy` / `serve shutdown` (SDK and CLI only; admins by default).
SERVE_ROUTES: tuple[Route, ...] = (
    Route("PUT", "/api/serve/applications/", "serve.deploy", "cluster", body="json"),
    Route("DELETE", "/api/serve/applications/", "serve.delete", "cluster"),
    Route(
        "POST",
        "/api/v1/applications/{app_name}/deployments/{deployment_name}/scale",
        "serve.scale",
        "cluster",
        body="json",
        max_body=CONTROL_JSON_LIMIT,
    ),
)

# Ray's dashboard web UI under DASHBOARD_MOUNT (docs/browser.md has the classification). The UI only ever
# issues GET; every route here that changes or executes something is admin-only by default.
_STATE_QUERY = ("limit", "timeout", "detail", "exclude_driver", "filter_keys", "filter_predicates", "filter_values")
_SUMMARY_QUERY = ("timeout", "summary_by", "filter_keys", "filter_predicates", "filter_values")
_PROFILE_COMMON = ("node_id", "ip", "native", "subprocesses")
_VIEW, _LOGS, _PROFILE = "dashboard.view", "dashboard.logs", "dashboard.profile"


def _dash(template: str, action: str, *query: str, resource: ResourceKind = "cluster") -> Route:
    return Route(
        "GET", DASHBOARD_MOUNT + template, action, resource, query=frozenset(query), session=True, mount=DASHBOARD_MOUNT
    )


DASHBOARD_ROUTES: tuple[Route, ...] = (
    # The single-page app and its assets.
    _dash("/", _VIEW, "theme"),
    _dash("/favicon.ico", _VIEW),
    _dash("/static/{static_path}", _VIEW),
    _dash("/timezone", _VIEW),
    # Read-only cluster state.
    _dash("/nodes", _VIEW, "view"),
    _dash("/nodes/{node_id}", _VIEW),
    _dash("/logical/actors", _VIEW, "ids"),
    _dash("/logical/actors/{actor_id}", _VIEW),
    _dash("/events", _VIEW, "job_id"),
    _dash("/api/cluster_status", _VIEW, "format"),
    _dash("/api/v0/cluster_metadata", _VIEW),
    _dash("/api/version", "cluster.version"),
    _dash("/api/jobs/", "jobs.list"),
    _dash("/api/jobs/{job_id}", "jobs.read", resource="job"),
    _dash("/api/v0/tasks", _VIEW, *_STATE_QUERY),
    _dash("/api/v0/actors", _VIEW, *_STATE_QUERY),
    _dash("/api/v0/jobs", _VIEW, *_STATE_QUERY),
    _dash("/api/v0/placement_groups", _VIEW, *_STATE_QUERY),
    _dash("/api/v0/runtime_envs", _VIEW, *_STATE_QUERY),
    _dash("/api/v0/tasks/summarize", _VIEW, *_SUMMARY_QUERY),
    _dash("/api/v0/tasks/timeline", _VIEW, "job_id", "download"),
    _dash("/api/v0/runtime_env_redaction", _VIEW),
    _dash("/api/v0/platform_events", _VIEW),
    _dash("/api/serve/applications/", _VIEW, "api_type"),
    _dash("/api/data/datasets/{job_id}", _VIEW),
    _dash("/api/prometheus_health", _VIEW),
    _dash("/api/profiling_enabled", _VIEW),
    # Logs of any worker on any node: may hold secrets printed by any job.
    _dash("/api/v0/logs", _LOGS, "glob", "node_id", "node_ip", "timeout"),
    _dash(
        "/api/v0/logs/file",
        _LOGS,
        "timeout",
        "node_id",
        "node_ip",
        "filename",
        "download_filename",
        "actor_id",
        "task_id",
        "submission_id",
        "pid",
        "lines",
        "suffix",
        "attempt_number",
        "filter_ansi_code",
    ),
    # Profiling runs py-spy / memray against processes on the node (any process of Ray's user): admins only.
    _dash("/worker/traceback", _PROFILE, "pid", *_PROFILE_COMMON),
    _dash("/worker/cpu_profile", _PROFILE, "pid", "duration", "format", "idle", *_PROFILE_COMMON),
    _dash("/task/traceback", _PROFILE, "task_id", "attempt_number", *_PROFILE_COMMON),
    _dash("/task/cpu_profile", _PROFILE, "task_id", "attempt_number", "duration", "format", "idle", *_PROFILE_COMMON),
    _dash(
        "/memory_profile",
        _PROFILE,
        "pid",
        "task_id",
        "attempt_number",
        "format",
        "duration",
        "leaks",
        "trace_python_allocators",
        *_PROFILE_COMMON,
    ),
)


# Grafana's panel URL parameters, and every template variable of Ray's dashboards (a test keeps this in step).
PANEL_VARIABLES = (
    "datasource",
    "SessionName",
    "Instance",
    "Cluster",
    "RayNodeType",
    "DatasetID",
    "Operator",
    "Application",
    "HTTP_Route",
    "gRPC_Method",
    "Deployment",
    "Replica",
    "Route",
    "vllm_model_name",
    "workerid",
    "deployment",
    "sglang_model_name",
    "interval",
    "window",
    "TrainRunName",
    "TrainRunId",
    "TrainWorkerWorldRank",
    "TrainWorkerActorId",
    "GpuIndex",
    "GpuDeviceName",
)
PANEL_QUERY = (
    "orgId",
    "theme",
    "panelId",
    "from",
    "to",
    "refresh",
    "timezone",
    "kiosk",
    *(f"var-{name}" for name in PANEL_VARIABLES),
)


def _console(
    method: str, template: str, action: str, *query: str, anonymous: bool = False, body: BodyKind = "none"
) -> Route:
    return Route(
        method,
        template,
        action,
        "cluster",
        body=body,
        query=frozenset(query),
        auth="anonymous" if anonymous else "identity",
        upstream=False,
        session=True,
        console=True,
        max_body=CONTROL_JSON_LIMIT if body != "none" else None,
    )


# raywarden's own browser pages (gateway/web). Sign-in and sign-out read the cookie or code themselves.
CONSOLE_ROUTES: tuple[Route, ...] = (
    _console("GET", "/", "console.home", anonymous=True),
    _console("GET", "/dashboard", "console.home", anonymous=True),
    _console("GET", "/dashboard/api/authentication_mode", "console.auth_mode", anonymous=True),
    _console("GET", "/ui/static/console.css", "console.asset", anonymous=True),
    _console("GET", "/favicon.ico", "console.asset", anonymous=True),
    _console("GET", "/ui/signin", "console.signin", "code", anonymous=True),
    _console("POST", "/ui/signin", "console.signin", anonymous=True, body="form"),
    _console("GET", "/ui/oidc/start", "console.oidc", "issuer", anonymous=True),
    _console(
        "GET",
        "/ui/oidc/callback",
        "console.oidc",
        "code",
        "state",
        "error",
        "error_description",
        "session_state",
        "iss",
        anonymous=True,
    ),
    _console("POST", "/ui/signout", "console.signout", anonymous=True, body="form"),
    _console("GET", "/ui/", "console.view"),
    _console("GET", "/ui/jobs", "console.view"),
    _console("GET", "/ui/admin/principals", "console.admin"),
    _console("GET", "/ui/admin/audit", "console.admin", "principal", "action", "decision", "since", "until", "limit"),
    # Ray's Metrics page: the gateway answers the Grafana health check and draws the panels (gateway/metrics).
    _console("GET", "/dashboard/api/grafana_health", _VIEW),
    *(
        _console("GET", f"/ui/metrics/{kind}/{{dashboard_uid}}{slug}", _VIEW, *PANEL_QUERY)
        for kind in ("d-solo", "d")
        for slug in ("", "/{dashboard_slug}")
    ),
)

ROUTES: tuple[Route, ...] = RAY_ROUTES + SERVE_ROUTES + CONTROL_ROUTES + DASHBOARD_ROUTES + CONSOLE_ROUTES
ACTIONS: frozenset[str] = frozenset(r.action for r in ROUTES if r.auth == "identity")


@dataclass(frozen=True)
class Match:
    route: Route
    params: dict[str, str]


def match(method: str, path: str, *, websocket: bool = False) -> Match | None:
    for route in ROUTES:
        # The dashboard also sends HEAD for GET routes (aiohttp answers both); nowhere else.
        head = method == "HEAD" and route.method == "GET" and bool(route.mount)
        if (route.method != method and not head) or route.websocket != websocket:
            continue
        found = route.regex.match(path)
        if found:
            return Match(route, found.groupdict())
    return None

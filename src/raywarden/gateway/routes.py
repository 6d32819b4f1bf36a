"""The route table: the whole attack surface of the gateway, in one place.

Every request is matched here after path canonicalisation. A method and path not listed is refused;
a query parameter not listed for its route is refused. Each route names the Cedar action that
authorizes it (raywarden/policy/schema.cedarschema declares the same actions).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from raywarden.gateway.request import ParamKind
from raywarden.gateway.route_model import (
    DASHBOARD_MOUNT,
    BodyKind,
    JobScope,
    ResourceKind,
    ResponseFilter,
    Route,
    params,
)

RAY_ROUTES: tuple[Route, ...] = (
    Route("GET", "/api/version", "cluster.version", "cluster"),
    Route("GET", "/api/ray/version", "cluster.version", "cluster"),  # what Serve's CLI checks before a deploy
    Route("GET", "/api/jobs/", "jobs.list", "cluster", filter="job_list"),
    # Job bodies are small (Ray keeps them in its KV store); 1 MiB leaves room for long dependency lists.
    Route("POST", "/api/jobs/", "jobs.submit", "new_job", body="job_submit", max_body=1024 * 1024),
    Route("GET", "/api/jobs/{job_id}", "jobs.read", "job", filter="job_details"),
    Route("DELETE", "/api/jobs/{job_id}", "jobs.delete", "job", forgets_job=True),
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
        "cluster",
        kind="control",
        body="json" if json_body else "none",
        auth="anonymous" if anonymous else "identity",
        max_body=CONTROL_JSON_LIMIT if json_body else None,
    )


CONTROL_ROUTES: tuple[Route, ...] = (
    _control("GET", "/raywarden/v1/ca", "raywarden.ca", anonymous=True, json_body=False),
    _control("POST", "/raywarden/v1/enroll", "identity.enroll", anonymous=True),
    _control("POST", "/raywarden/v1/renew", "identity.renew", anonymous=False),
    _control("POST", "/raywarden/v1/renew/expired", "identity.renew_expired", anonymous=True),
    _control("POST", "/raywarden/v1/token", "identity.token", anonymous=False),
    _control("POST", "/raywarden/v1/nodes/join", "raywarden.node.join", anonymous=True),
    _control("POST", "/raywarden/v1/nodes/peers", "raywarden.node.peers", anonymous=True),
    _control("POST", "/raywarden/v1/nodes/leave", "raywarden.node.leave", anonymous=True),
    _control("POST", "/raywarden/v1/nodes/renew", "raywarden.node.renew", anonymous=True),
    _control("POST", "/raywarden/v1/nodes/restarted", "raywarden.node.restarted", anonymous=True),
    _control("POST", "/raywarden/v1/signin-link", "identity.signin_link", anonymous=False),
    # The caller's own identity as the gateway sees it, and revoking the certificate it presents.
    _control("GET", "/raywarden/v1/whoami", "identity.whoami", anonymous=False, json_body=False),
    _control("POST", "/raywarden/v1/logout", "identity.logout", anonymous=False),
)


def _serve(method: str, path: str, action: str, op: str, *, body: str = "", dashboard: bool = False) -> Route:
    mount, query = DASHBOARD_MOUNT * dashboard, params("api_type") if op == "list" else {}
    return Route(method, mount + path, action, "serve_app", kind="serve", serve_op=op, mount=mount, query=query,
        body="json" if body else "none", max_body={"config": 1024 * 1024, "small": CONTROL_JSON_LIMIT}.get(body),
        session=dashboard)  # fmt: skip


_APPS, _OWN_APPS, _V1 = "/api/serve/applications/", "/raywarden/v1/serve/applications", "/api/v1/applications"
SERVE_ROUTES: tuple[Route, ...] = (  # Ray Serve's REST API (stock `serve` CLI) and raywarden's (docs/serve.md)
    *(_serve("GET", _APPS, "dashboard.view", "list", dashboard=d) for d in (False, True)),
    _serve("PUT", _APPS, "serve.deploy", "replace", body="config"),
    _serve("DELETE", _APPS, "serve.delete", "delete_all"),
    _serve("POST", _V1 + "/{app_name}/deployments/{deployment_name}/scale", "serve.scale", "scale", body="small"),
    _serve("PUT", _OWN_APPS, "serve.deploy", "merge", body="config"),
    _serve("DELETE", _OWN_APPS + "/{app_name}", "serve.delete", "delete_one"),
    _serve("PUT", _OWN_APPS + "/{app_name}/groups", "serve.deploy", "groups", body="small"),
)  # fmt: skip

# Ray's dashboard web UI under DASHBOARD_MOUNT (docs/browser.md has the classification). The UI only ever
# issues GET; every route here that changes or executes something is admin-only by default.
_FILTERS = ("filter_keys", "filter_predicates", "filter_values")  # Ray reads these as aligned lists
_STATE_QUERY = params("limit", "timeout", "detail", "exclude_driver", lists=_FILTERS)
_SUMMARY_QUERY = params("timeout", "summary_by", lists=_FILTERS)
_PROFILE_COMMON = ("node_id", "ip", "native", "subprocesses")
_VIEW, _LOGS, _PROFILE = "dashboard.view", "dashboard.logs", "dashboard.profile"


def _dash(
    template: str,
    action: str,
    query: Mapping[str, ParamKind] | None = None,
    *,
    resource: ResourceKind = "cluster",
    scope: JobScope = "none",
    filter: ResponseFilter | None = None,
) -> Route:
    return Route(
        "GET",
        DASHBOARD_MOUNT + template,
        action,
        resource,
        kind="dashboard",
        query=query or {},
        session=True,
        mount=DASHBOARD_MOUNT,
        scope=scope,
        filter=filter,
    )


DASHBOARD_ROUTES: tuple[Route, ...] = (
    # The single-page app and its assets.
    _dash("/", _VIEW, params("theme")),
    _dash("/favicon.ico", _VIEW),
    _dash("/static/{static_path}", _VIEW),
    _dash("/timezone", _VIEW),
    # Read-only cluster state.
    _dash("/nodes", _VIEW, params("view"), filter="nodes"),
    _dash("/nodes/{node_id}", _VIEW, filter="node_detail"),
    _dash("/logical/actors", _VIEW, params("ids"), filter="actor_table"),
    _dash("/logical/actors/{actor_id}", _VIEW, filter="actor_detail"),
    _dash("/events", _VIEW, params("job_id"), scope="query", filter="events"),
    _dash("/api/cluster_status", _VIEW, params("format")),
    _dash("/api/v0/cluster_metadata", _VIEW),
    _dash("/api/version", "cluster.version"),
    _dash("/api/jobs/", "jobs.list", filter="job_list"),
    _dash("/api/jobs/{job_id}", "jobs.read", resource="job", filter="job_details"),
    _dash("/api/v0/tasks", _VIEW, _STATE_QUERY, filter="state_list"),
    _dash("/api/v0/actors", _VIEW, _STATE_QUERY, filter="state_list"),
    _dash("/api/v0/jobs", _VIEW, _STATE_QUERY, filter="state_list"),
    _dash("/api/v0/placement_groups", _VIEW, _STATE_QUERY, filter="placement_groups"),
    _dash("/api/v0/runtime_envs", _VIEW, _STATE_QUERY, filter="runtime_envs"),
    _dash("/api/v0/tasks/summarize", _VIEW, _SUMMARY_QUERY, scope="filters_or_all"),
    _dash("/api/v0/tasks/timeline", _VIEW, params("job_id", "download"), scope="query_or_all"),
    _dash("/api/v0/runtime_env_redaction", _VIEW),
    _dash("/api/v0/platform_events", _VIEW),
    _dash("/api/data/datasets/{job_id}", _VIEW, scope="path"),
    _dash("/api/prometheus_health", _VIEW),
    _dash("/api/profiling_enabled", _VIEW, filter="profiling_flag"),
    # Logs of any worker on any node: may hold secrets printed by any job.
    _dash("/api/v0/logs", _LOGS, params("glob", "node_id", "node_ip", "timeout")),
    _dash(
        "/api/v0/logs/file",
        _LOGS,
        params(
            *"timeout node_id node_ip filename download_filename actor_id task_id submission_id pid".split(),
            *"lines suffix attempt_number filter_ansi_code".split(),
        ),
        scope="driver_log",
    ),
    # Profiling runs py-spy / memray against processes on the node (any process of Ray's user): admins only.
    _dash("/worker/traceback", _PROFILE, params("pid", *_PROFILE_COMMON)),
    _dash("/worker/cpu_profile", _PROFILE, params("pid", "duration", "format", "idle", *_PROFILE_COMMON)),
    _dash("/task/traceback", _PROFILE, params("task_id", "attempt_number", *_PROFILE_COMMON)),
    _dash(
        "/task/cpu_profile",
        _PROFILE,
        params("task_id", "attempt_number", "duration", "format", "idle", *_PROFILE_COMMON),
    ),
    _dash(
        "/memory_profile",
        _PROFILE,
        params(*"pid task_id attempt_number format duration leaks trace_python_allocators".split(), *_PROFILE_COMMON),
    ),
)


# Grafana's panel URL parameters, and every template variable of Ray's dashboards (a test keeps this in step).
PANEL_VARIABLES = tuple(
    "datasource SessionName Instance Cluster RayNodeType DatasetID Operator Application HTTP_Route gRPC_Method "
    "Deployment Replica Route vllm_model_name workerid deployment sglang_model_name interval window TrainRunName "
    "TrainRunId TrainWorkerWorldRank TrainWorkerActorId GpuIndex GpuDeviceName".split()
)
PANEL_QUERY = (
    *"orgId theme panelId from to refresh timezone kiosk".split(),
    *(f"var-{name}" for name in PANEL_VARIABLES),
)


def _console(
    method: str,
    template: str,
    action: str,
    page: str,
    query: Mapping[str, ParamKind] | None = None,
    *,
    anonymous: bool = False,
    body: BodyKind = "none",
) -> Route:
    return Route(
        method,
        template,
        action,
        "cluster",
        kind="console_anonymous" if anonymous else "console_page",
        body=body,
        query=query or {},
        auth="anonymous" if anonymous else "identity",
        session=True,
        max_body=CONTROL_JSON_LIMIT if body != "none" else None,
        page=page,
    )


# raywarden's own browser pages (gateway/web). Sign-in and sign-out read the cookie or code themselves.
CONSOLE_ROUTES: tuple[Route, ...] = (
    _console("GET", "/", "console.home", "home", anonymous=True),
    _console("GET", "/dashboard", "console.home", "dashboard_home", anonymous=True),
    _console("GET", "/dashboard/api/authentication_mode", "console.auth_mode", "auth_mode", anonymous=True),
    _console("GET", "/ui/static/console.css", "console.asset", "stylesheet", anonymous=True),
    _console("GET", "/favicon.ico", "console.asset", "favicon", anonymous=True),
    _console("GET", "/ui/signin", "console.signin", "signin_form", params(secrets=("code",)), anonymous=True),
    _console("POST", "/ui/signin", "console.signin", "signin", anonymous=True, body="form"),
    _console("GET", "/ui/oidc/start", "console.oidc", "oidc_start", params("issuer"), anonymous=True),
    _console(
        "GET",
        "/ui/oidc/callback",
        "console.oidc",
        "oidc_callback",
        params("error", "error_description", "session_state", "iss", secrets=("code", "state")),
        anonymous=True,
    ),
    _console("POST", "/ui/signout", "console.signout", "signout", anonymous=True, body="form"),
    _console("GET", "/ui/", "console.view", "whoami"),
    _console("GET", "/ui/jobs", "console.view", "my_jobs"),
    _console("GET", "/ui/admin/principals", "console.admin", "principals"),
    _console(
        "GET",
        "/ui/admin/audit",
        "console.admin",
        "audit",
        params("principal", "action", "decision", "since", "until", "limit"),
    ),
    # Ray's Metrics page: the gateway answers the Grafana health check and draws the panels (gateway/metrics).
    _console("GET", "/dashboard/api/grafana_health", _VIEW, "grafana_health"),
    *(
        _console("GET", f"/ui/metrics/{kind}/{{dashboard_uid}}{slug}", _VIEW, page, params(*PANEL_QUERY))
        for kind, page in (("d-solo", "metrics_panel"), ("d", "metrics_dashboard"))
        for slug in ("", "/{dashboard_slug}")
    ),
)

# The fields of the console's two forms (POST bodies): the same grammar and rules as a query.
FORM_FIELDS: dict[str, Mapping[str, ParamKind]] = {
    "signin": params(secrets=("code",)),
    "signout": params(secrets=("csrf",)),
}

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

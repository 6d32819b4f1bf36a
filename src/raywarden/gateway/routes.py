"""The route table: the whole attack surface of the gateway, in one place.

Every request is matched here after path canonicalisation. A method and path not listed is refused;
a query parameter not listed for its route is refused. Each route names the Cedar action that
authorizes it (raywarden/policy/schema.cedarschema declares the same actions).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from raywarden.gateway.request import ParamKind, Target

RouteKind = Literal[
    "ray_api",  # Ray's Jobs and packages APIs: forwarded (gateway/handlers/ray_api.py)
    "dashboard",  # Ray's dashboard under DASHBOARD_MOUNT: forwarded, answers kept per job (handlers/dashboard.py)
    "console_page",  # raywarden's own pages for an identity (handlers/console.py, gateway/web)
    "console_anonymous",  # sign-in, sign-out and the console's static answers (handlers/console.py)
    "control",  # raywarden's own API, answered by the gateway (handlers/control.py, gateway/control)
    "serve",  # Ray Serve's control routes: deploy, delete, scale, list (gateway/serve/control.py, by serve_op)
]
# What the policy decides on. A "job" route names a job in its path: a refusal there reads like a missing job.
ResourceKind = Literal["cluster", "new_job", "job", "package", "serve_app"]
BodyKind = Literal["none", "job_submit", "package", "json", "form"]
# "identity": the caller must authenticate (certificate or bearer) and a policy must permit the action.
# "anonymous": raywarden's own enrollment endpoints, where the credential is in the body (a one-time code
# or join token) and the handler verifies it; also the console's sign-in and sign-out pages (gateway/web), which
# read the session cookie themselves.
AuthKind = Literal["identity", "anonymous"]
# How a dashboard request is scoped to jobs, decided before Ray is asked (gateway/jobaccess.py):
JobScope = Literal[
    "none",
    "path",  # the job in the path's {job_id}: "no such job" unless the caller may view it
    "query",  # the job of ?job_id= when given ("global" names the cluster's own events)
    "query_or_all",  # the job of ?job_id=; without one the answer covers every job
    "filters_or_all",  # the jobs of the state API's job_id equality filters; without one, every job
    "driver_log",  # a denied log read of exactly one job's driver log is decided as jobs.logs on that job
]
# How Ray's answer is reduced to what the caller may see, after Ray answers (gateway/jobaccess.py).
ResponseFilter = Literal[
    "job_list",  # Ray's job list: jobs the caller may view, env values where it may read them
    "job_details",  # one job's record: env values where the caller may read them
    "state_list",  # a state-API list whose entries carry "job_id"
    "placement_groups",  # a state-API list whose entries carry "creator_job_id"
    "actor_table",  # /logical/actors
    "actor_detail",  # /logical/actors/{actor_id}
    "events",  # /events, per job and the cluster's own
    "nodes",  # /nodes: each node's workers and actors
    "node_detail",  # /nodes/{node_id}
    "runtime_envs",  # not tied to a job: env values redacted for everyone
    "profiling_flag",  # profiling offered only to those who may profile
]
# Filters whose answer names jobs one by one: they need the caller's decision for every job Ray lists.
PER_JOB_FILTERS: frozenset[str] = frozenset(
    {"state_list", "placement_groups", "actor_table", "actor_detail", "events", "nodes", "node_detail"}
)
_ONE: ParamKind = "one"

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


def params(*names: str, lists: tuple[str, ...] = (), secrets: tuple[str, ...] = ()) -> dict[str, ParamKind]:
    """A route's query parameters: single values unless listed as read in order, or as secrets."""
    found: dict[str, ParamKind] = dict.fromkeys(names, _ONE)
    found.update(dict.fromkeys(lists, "list"))
    found.update(dict.fromkeys(secrets, "secret"))
    return found


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    action: str
    resource: ResourceKind
    kind: RouteKind = "ray_api"
    body: BodyKind = "none"
    websocket: bool = False
    query: Mapping[str, ParamKind] = field(default_factory=dict)
    auth: AuthKind = "identity"
    # Body size limit for this route; None means the cluster's max_body_bytes (sized for packages).
    max_body: int | None = None
    # True: a browser session cookie authenticates this route (dashboard and console); elsewhere it is ignored.
    session: bool = False
    # Path prefix the route is served under ("" or DASHBOARD_MOUNT; the template includes it); stripped
    # before forwarding to Ray.
    mount: str = ""
    scope: JobScope = "none"
    filter: ResponseFilter | None = None
    # The console page (gateway/web) that answers a console route.
    page: str = ""
    serve_op: str | None = None  # "replace": Ray's PUT of every application; "merge": raywarden's, of some
    # Deletes the job in its path: workers forget their cache of it (gateway/jobrecords.py) before its id is reused.
    forgets_job: bool = False
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

    @property
    def needs_job_access(self) -> bool:
        """Whether the caller's decision for every job is needed (per-job filter or job scoping)."""
        return self.filter in PER_JOB_FILTERS or self.scope not in ("none", "driver_log")


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


@dataclass(frozen=True)
class Routed:
    """A request matched to its route: the route, the path's parameters, and the target as parsed."""

    route: Route
    params: dict[str, str]
    target: Target


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

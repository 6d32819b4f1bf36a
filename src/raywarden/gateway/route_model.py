"""What a route is: the vocabulary of the route table (routes.py) and the ``Route`` it is made of.

A route names its method and path template, the Cedar action that authorizes it, what the policy decides on, how
its body is read, who may call it, and how a dashboard answer is scoped and filtered to the caller's jobs.
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


@dataclass(frozen=True)
class Routed:
    """A request matched to its route: the route, the path's parameters, and the target as parsed."""

    route: Route
    params: dict[str, str]
    target: Target

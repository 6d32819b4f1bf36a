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
BodyKind = Literal["none", "job_submit", "package", "json"]
# "identity": the caller must authenticate (certificate or bearer) and a policy must permit the action.
# "anonymous": raywarden's own enrollment endpoints, where the credential is in the body (a one-time code
# or join token) and the handler verifies it.
AuthKind = Literal["identity", "anonymous"]

# Ray submission ids are "raysubmit_<random>" or user-chosen; job ids are hex. Neither needs more.
_SEGMENT = {
    "job_id": r"[A-Za-z0-9][A-Za-z0-9_\-.]{0,127}",
    "protocol": r"gcs",
    "package_name": r"_ray_pkg_[A-Za-z0-9_\-.]{1,128}\.zip",
}


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
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern = re.sub(r"\{(\w+)\}", lambda m: f"(?P<{m[1]}>{_SEGMENT[m[1]]})", self.template)
        object.__setattr__(self, "regex", re.compile(f"^{pattern}$"))


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
    return Route(method, template, action, "control" if anonymous else "cluster",
                 body="json" if json_body else "none", auth="anonymous" if anonymous else "identity",
                 upstream=False, max_body=CONTROL_JSON_LIMIT if json_body else None)


CONTROL_ROUTES: tuple[Route, ...] = (
    _control("GET", "/raywarden/v1/ca", "raywarden.ca", anonymous=True, json_body=False),
    _control("POST", "/raywarden/v1/enroll", "identity.enroll", anonymous=True),
    _control("POST", "/raywarden/v1/renew", "identity.renew", anonymous=False),
    _control("POST", "/raywarden/v1/token", "identity.token", anonymous=False),
    _control("POST", "/raywarden/v1/nodes/join", "raywarden.node.join", anonymous=True),
    _control("POST", "/raywarden/v1/nodes/peers", "raywarden.node.peers", anonymous=True),
    _control("POST", "/raywarden/v1/nodes/leave", "raywarden.node.leave", anonymous=True),
)

ROUTES: tuple[Route, ...] = RAY_ROUTES + CONTROL_ROUTES
ACTIONS: frozenset[str] = frozenset(r.action for r in ROUTES if r.auth == "identity")


@dataclass(frozen=True)
class Match:
    route: Route
    params: dict[str, str]


def match(method: str, path: str, *, websocket: bool = False) -> Match | None:
    for route in ROUTES:
        if route.method != method or route.websocket != websocket:
            continue
        found = route.regex.match(path)
        if found:
            return Match(route, found.groupdict())
    return None

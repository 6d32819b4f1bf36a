"""Every dashboard and console route is classified, and the default pack keeps what executes or changes
something (profiling, Serve, the console's admin pages) for admins."""

from __future__ import annotations

import pytest

from raywarden.gateway.route_model import DASHBOARD_MOUNT
from raywarden.gateway.routes import CONSOLE_ROUTES, DASHBOARD_ROUTES, SERVE_ROUTES, match
from raywarden.policy.engine import CLUSTER_ID, Entity
from tests.unit.policy.policy_support import decide, engine, principal

pytestmark = pytest.mark.unit
ENGINE = engine()
CLUSTER = Entity("Cluster", CLUSTER_ID)
# Serve's actions are decided per application (tests/unit/gateway/serve/test_serve_policy.py).
ADMIN_ONLY = {"dashboard.profile", "console.admin"}
EXPECTED = {
    "developers": {"dashboard.view", "console.view"},
    "viewers": {"dashboard.view", "dashboard.logs", "console.view"},
    "nobody": {"console.view"},
}


def test_the_dashboard_is_read_only_and_mounted() -> None:
    for route in DASHBOARD_ROUTES:
        assert route.method == "GET" and route.template.startswith(f"{DASHBOARD_MOUNT}/") and route.session
        assert route.action.startswith(("dashboard.", "jobs.", "cluster."))
    profiling = {r.ray_template for r in DASHBOARD_ROUTES if r.action == "dashboard.profile"}
    assert profiling == {
        "/worker/traceback",
        "/worker/cpu_profile",
        "/task/traceback",
        "/task/cpu_profile",
        "/memory_profile",
    }
    assert {r.action for r in SERVE_ROUTES} == {"serve.deploy", "serve.delete", "serve.scale", "dashboard.view"}


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/api/authenticate",
        "/dashboard/log_proxy",
        "/dashboard/test/dump",
        "/dashboard/api/v0/delay/5",
        "/dashboard/api/prometheus/sd",
        "/dashboard/usage_stats_enabled",
        "/dashboard/api/v0/logs/stream",
        "/dashboard/worker/gpu_profile",
        "/dashboard/api/task_events",
        "/dashboard/report_events",
        "/dashboard/static/js/main.84605326.js.map",
        "/dashboard/static/../../etc/passwd",
        "/dashboard/api/actors/kill",
    ],
)
def test_dangerous_or_unused_dashboard_routes_are_not_routed(path: str) -> None:
    for method in ("GET", "POST", "PUT", "DELETE"):
        assert match(method, path) is None, (method, path)


def test_the_dashboards_job_routes_cannot_change_jobs() -> None:
    for method in ("POST", "PUT", "DELETE"):
        for path in ("/dashboard/api/jobs/", "/dashboard/api/jobs/raysubmit_1", "/dashboard/api/jobs/raysubmit_1/stop"):
            assert match(method, path) is None


def test_head_only_where_the_dashboard_serves_get() -> None:
    assert match("HEAD", "/dashboard/api/v0/platform_events") is not None
    assert match("HEAD", "/api/jobs/") is None


@pytest.mark.parametrize("group", sorted(EXPECTED))
def test_default_pack_for_browser_actions(group: str) -> None:
    who = principal("alice", *(() if group == "nobody" else (group,)))
    actions = {r.action for r in (*DASHBOARD_ROUTES, *SERVE_ROUTES, *CONSOLE_ROUTES) if r.auth == "identity"}
    actions = {a for a in actions if not a.startswith("serve.")}
    for action in sorted(actions - {"jobs.list", "jobs.read", "cluster.version"}):
        allowed = decide(ENGINE, who, action, CLUSTER).allowed
        assert allowed is (action in EXPECTED[group]), (group, action)
        assert decide(ENGINE, principal("root", "admins"), action, CLUSTER).allowed
    for action in ADMIN_ONLY:
        assert not decide(ENGINE, who, action, CLUSTER).allowed


def test_signin_links_need_a_certificate_and_a_person() -> None:
    from raywarden.policy.entities import request_context

    user, bot = principal("alice"), principal("ci", kind="sa")
    for method, allowed in (("certificate", True), ("token", False), ("session", False), ("oidc", False)):
        context = request_context(method, "127.0.0.1", 10)
        assert decide(ENGINE, user, "identity.signin_link", CLUSTER, context).allowed is allowed
    assert not decide(ENGINE, bot, "identity.signin_link", CLUSTER).allowed

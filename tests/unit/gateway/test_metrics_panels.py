"""Ray's Grafana panels without Grafana (gateway/metrics): variables, time ranges, drawing, health answers."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from raywarden.config import ClusterConfig
from raywarden.gateway.authn import Identity
from raywarden.gateway.authz import Viewer
from raywarden.gateway.metrics.chart import Line, format_value, legend_name, render
from raywarden.gateway.metrics.dashboards import Panel, dashboard_uids, dashboards
from raywarden.gateway.metrics.prometheus import Series
from raywarden.gateway.metrics.query import TimeRange, expand, time_range, variables
from raywarden.gateway.metrics.views import GRAFANA_HOST, grafana_health
from raywarden.gateway.request import Target
from raywarden.gateway.responses import Refusal
from raywarden.gateway.routes import PANEL_VARIABLES
from raywarden.gateway.upstream import Upstream
from raywarden.gateway.web import Console, PageRequest, PageResult, WebServices
from raywarden.identity.sessions import SessionStore
from raywarden.identity.store import IdentityStore
from raywarden.policy.entities import request_context
from raywarden.secret import Secret
from raywarden.state import StateDir
from tests.unit.policy.policy_support import engine, principal, spiffe

pytestmark = pytest.mark.unit
NOW = 1_800_000_000.0
WINDOW = TimeRange(NOW - 3600, NOW)


def test_every_variable_of_rays_dashboards_is_an_allowed_query_parameter() -> None:
    names = {name for board in dashboards().values() for name in board.defaults}
    assert names <= set(PANEL_VARIABLES), names - set(PANEL_VARIABLES)


def test_every_panel_expression_is_left_with_no_variable() -> None:
    count = 0
    for board in dashboards().values():
        values = variables({"var-SessionName": "session_2026-11-26_17-30-00_1_1"}, board.defaults)
        for item in board.items:
            if isinstance(item, Panel):
                for target in item.targets:
                    expr = expand(target.expr, values, WINDOW)
                    assert "$" not in expr, (board.uid, item.title, expr)
                    count += 1
    assert count > 100  # Ray ships a few hundred panel queries; all of them expand


def test_variables_are_label_values_only() -> None:
    defaults = dashboards()[dashboard_uids()["default"]].defaults
    assert variables({}, defaults)["Instance"] == ".+"
    assert variables({"var-Instance": "127.0.0.1:8080"}, defaults)["Instance"] == "127.0.0.1:8080"
    assert variables({"var-Instance": "$__all"}, defaults)["Instance"] == ".+"
    for bad in ('x"} or vector(1) #', "a\\b", "{x}", "a\nb", "x" * 300):
        with pytest.raises(Refusal) as refused:
            variables({"var-Instance": bad}, defaults)
        assert refused.value.status == 400 and refused.value.hint


def test_grafana_time_ranges() -> None:
    assert time_range({"from": "now-5m", "to": "now"}, NOW) == TimeRange(NOW - 300, NOW)
    assert time_range({}, NOW) == TimeRange(NOW - 3600, NOW)
    assert time_range({"from": "1799990000000", "to": "1800000000000"}, NOW) == TimeRange(1_799_990_000, NOW)
    for bad in ({"from": "yesterday"}, {"from": "now", "to": "now-1h"}, {"from": "now-30d"}):
        with pytest.raises(Refusal):
            time_range(bad, NOW)
    assert TimeRange(NOW - 3600, NOW).step == 15 and TimeRange(NOW - 60, NOW).step == 5


def test_rate_interval_and_range_follow_the_window() -> None:
    expr = 'rate(x[$__rate_interval]) + y[${__range}] + z{a=~"$Unknown"}'
    assert expand(expr, {}, WINDOW) == 'rate(x[40s]) + y[3600s] + z{a=~".*"}'


def test_series_names_are_escaped_and_units_formatted() -> None:
    evil = Series({"Name": "<script>alert(1)</script>"}, ((NOW - 60, 1.0), (NOW, 3.0)))
    html = render("Tasks", [Line(legend_name("{{Name}}", evil), evil)], TimeRange(NOW - 120, NOW), "tasks")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<polyline" in html and 'role="img"' in html
    assert "No data" in render("Tasks", [], WINDOW, "tasks")
    assert legend_name("", Series({"__name__": "m", "a": "1"}, ())) == '{a="1"}'
    assert format_value(3 * 1024**3, "bytes") == "3.0 GiB"
    assert format_value(2048, "Bps") == "2.0 KiB/s"
    assert format_value(0.25, "percentunit") == "25.0%"
    assert format_value(12.345, "%") == "12.3%"
    assert format_value(1500000, "short") == "1.50M"


def test_health_answer_shows_metrics_only_to_those_who_see_every_job() -> None:
    assert grafana_health(False, True, "s")["result"] is False
    assert grafana_health(True, False, "s")["data"] == {"grafanaHost": "DISABLED"}
    shown = grafana_health(True, True, "session_x")["data"]
    assert shown["grafanaHost"] == GRAFANA_HOST and shown["sessionName"] == "session_x"
    assert shown["dashboardUids"]["default"] == "rayDefaultDashboard"
    assert all(re.fullmatch(r"[A-Za-z0-9_\-]{1,64}", uid) for uid in shown["dashboardUids"].values())


def test_without_prometheus_the_ui_is_told_so_and_panels_are_refused(tmp_path: Path) -> None:
    """A gateway started without --prometheus-url: Ray's "set up Prometheus" notice, and 404 with a hint."""
    state = StateDir(tmp_path / "state")
    state.root.mkdir()
    store = IdentityStore.create(tmp_path / "identity.db")
    services = WebServices(state, ClusterConfig(), store, SessionStore(tmp_path / "identity.db", store))
    # Never called: without Prometheus the console does not ask Ray for its job list.
    console = Console(services, Upstream("http://127.0.0.1:1", Secret("unused"), 1.0))
    identity = Identity(spiffe("vera"), "user", "vera", ("viewers",), "certificate", "serial")
    viewer = Viewer(engine(), principal("vera", "viewers"), request_context("certificate", "127.0.0.1", 10))

    async def ask(page: str, path: str, params: dict[str, str]) -> PageResult:
        target = Target(path, (("panelId", "41"),))
        return await console.page(PageRequest(page, target, params, "127.0.0.1", identity=identity, viewer=viewer))

    health = asyncio.run(ask("grafana_health", "/dashboard/api/grafana_health", {}))
    assert health.status == 200 and json.loads(bytes(health.response.body))["result"] is False
    with pytest.raises(Refusal) as refused:
        asyncio.run(
            ask("metrics_panel", "/ui/metrics/d-solo/rayDefaultDashboard", {"dashboard_uid": "rayDefaultDashboard"})
        )
    assert refused.value.status == 404 and "apt-get install prometheus" in (refused.value.hint or "")

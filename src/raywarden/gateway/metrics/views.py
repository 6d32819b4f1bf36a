"""The answers behind Ray's Metrics page: the Grafana health check the UI asks first, one panel (the
iframes), and a whole dashboard (the "View in Grafana" links)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from typing import Any

from raywarden.gateway.metrics.chart import Line, legend_name, render
from raywarden.gateway.metrics.dashboards import Dashboard, Panel, Row, dashboard_uids, dashboards
from raywarden.gateway.metrics.prometheus import Prometheus, PrometheusUnavailable
from raywarden.gateway.metrics.query import TimeRange, expand, time_range, variables
from raywarden.gateway.responses import Refusal

# Where the panels are served; the UI builds iframe URLs as GRAFANA_HOST + "/d-solo/UID...".
GRAFANA_HOST = "/ui/metrics"
DATASOURCE = "Prometheus"
_REFRESH = re.compile(r"(\d{1,4})([smh])")


@dataclass
class View:
    title: str
    body: str
    refresh_s: int | None = None
    audit: dict[str, Any] = field(default_factory=dict)


def grafana_health(configured: bool, may_see_every_job: bool, session_name: str) -> dict[str, Any]:
    """What Ray's /api/grafana_health would answer, for this caller.

    Panels show task and actor names of every job, so only those allowed to view every job get them;
    for anyone else the UI is told metrics are disabled and hides the charts."""
    if not configured:
        return {"result": False, "msg": "Grafana healthcheck failed", "data": {}}
    if not may_see_every_job:
        return {"result": True, "msg": "Grafana disabled", "data": {"grafanaHost": "DISABLED"}}
    return {
        "result": True,
        "msg": "Grafana running",
        "data": {
            "grafanaHost": GRAFANA_HOST,
            "grafanaOrgId": "1",
            "sessionName": session_name,
            "dashboardUids": dashboard_uids(),
            "dashboardDatasource": DATASOURCE,
            "grafanaClusterFilter": None,
        },
    }


class MetricsViews:
    def __init__(self, prometheus: Prometheus, session_name: Callable[[], str]) -> None:
        self.prometheus = prometheus
        self.session_name = session_name

    async def panel(self, uid: str, params: dict[str, str]) -> View:
        board = _dashboard(uid)
        panel_id = params.get("panelId", "")
        panel = board.panel(int(panel_id)) if panel_id.isdigit() else None
        if panel is None:
            raise Refusal(
                404,
                "no such panel",
                reason=f"panel {panel_id[:20]!r} not in dashboard {uid}",
                hint="panels are those of Ray's own dashboards",
            )
        window, values = time_range(params), variables(params, board.defaults)
        body = await self._draw(panel, window, values)
        return View(panel.title, body, refresh_s=_refresh(params), audit={"dashboard": uid, "panel": panel.id})

    async def dashboard(self, uid: str, params: dict[str, str]) -> View:
        board = _dashboard(uid)
        window, values = time_range(params), variables(params, board.defaults)
        panels = [item for item in board.items if isinstance(item, Panel)]
        drawn = dict(
            zip(
                (p.id for p in panels),
                await asyncio.gather(*(self._draw(p, window, values) for p in panels)),
                strict=True,
            )
        )
        parts = []
        for item in board.items:
            if isinstance(item, Row):
                parts.append(f"<h2>{escape(item.title)}</h2>")
            else:
                parts.append(f'<section class="panel"><h3>{escape(item.title)}</h3>{drawn[item.id]}</section>')
        return View(board.title, "".join(parts), refresh_s=_refresh(params), audit={"dashboard": uid})

    async def _draw(self, panel: Panel, window: TimeRange, values: dict[str, str]) -> str:
        try:
            results = await asyncio.gather(
                *(self.prometheus.query_range(expand(t.expr, values, window), window) for t in panel.targets)
            )
        except PrometheusUnavailable as exc:
            return f'<p class="error" role="alert">{escape(str(exc))}</p>'
        lines = [
            Line(legend_name(target.legend, series), series)
            for target, found in zip(panel.targets, results, strict=True)
            for series in found
        ]
        described = f'<p class="muted">{escape(panel.description)}</p>' if panel.description else ""
        return described + render(panel.title, lines, window, panel.unit)


def _dashboard(uid: str) -> Dashboard:
    board = dashboards().get(uid)
    if board is None:
        raise Refusal(
            404,
            "no such dashboard",
            reason=f"dashboard uid {uid[:64]!r} is not one of Ray's",
            hint="the dashboards are Ray's own: " + ", ".join(sorted(dashboards())),
        )
    return board


def _refresh(params: dict[str, str]) -> int | None:
    """Grafana's ``refresh``: "5s", "1m"..., or present without a value (the UI's cards): every 30 s."""
    if "refresh" not in params:
        return None
    found = _REFRESH.fullmatch(params["refresh"])
    if not found:
        return 30
    return max(5, int(found.group(1)) * {"s": 1, "m": 60, "h": 3600}[found.group(2)])

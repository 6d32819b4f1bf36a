"""Ray's Grafana dashboards (panels, their PromQL and units), as Ray generates them for Grafana."""

from __future__ import annotations

import gc
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    id: int
    title: str
    description: str
    unit: str
    targets: tuple[Target, ...]
    stacked: bool


@dataclass(frozen=True)
class Row:
    title: str


@dataclass(frozen=True)
class Dashboard:
    uid: str
    key: str  # how the dashboard's UI names it ("default", "serve", ...)
    title: str
    # Panels and row headings in Ray's order.
    items: tuple[Panel | Row, ...]
    # Template variable -> the value that stands for "all" (Grafana's allValue, or the variable's default).
    defaults: dict[str, str]

    def panel(self, panel_id: int) -> Panel | None:
        return next((p for p in self.items if isinstance(p, Panel) and p.id == panel_id), None)


# The key the dashboard's UI looks each dashboard up by (Ray's /api/grafana_health "dashboardUids"), and
# Ray's generator for it.
_GENERATORS: dict[str, str] = {
    "default": "generate_default_grafana_dashboard",
    "serve": "generate_serve_grafana_dashboard",
    "serveDeployment": "generate_serve_deployment_grafana_dashboard",
    "serveLlm": "generate_serve_llm_grafana_dashboard",
    "serveLlmSglang": "generate_serve_llm_sglang_grafana_dashboard",
    "data": "generate_data_grafana_dashboard",
    "dataLlm": "generate_data_llm_grafana_dashboard",
    "train": "generate_train_grafana_dashboard",
}


@cache
def dashboards() -> dict[str, Dashboard]:
    """Every dashboard Ray ships, by uid. Built once, from Ray's own generator (the panels Grafana would get)."""
    from ray.dashboard.modules.metrics import grafana_dashboard_factory as factory

    found: dict[str, Dashboard] = {}
    with warnings.catch_warnings():
        # Ray's generator leaves its base JSON files for the collector to close; close them here, quietly.
        warnings.simplefilter("ignore", ResourceWarning)
        for key, name in _GENERATORS.items():
            generate: Callable[[], tuple[str, str]] = getattr(factory, name)
            content, uid = generate()
            found[uid] = _parse(uid, key, json.loads(content))
        gc.collect()
    return found


def dashboard_uids() -> dict[str, str]:
    return {board.key: uid for uid, board in dashboards().items()}


def _parse(uid: str, key: str, data: dict[str, Any]) -> Dashboard:
    items: list[Panel | Row] = []
    for raw in data.get("panels", []):
        if raw.get("type") == "row":
            items.append(Row(str(raw.get("title", ""))))
            continue
        targets = tuple(
            Target(str(t["expr"]), str(t.get("legendFormat") or "")) for t in raw.get("targets", []) if t.get("expr")
        )
        items.append(
            Panel(
                int(raw["id"]),
                str(raw.get("title", "")),
                str(raw.get("description") or ""),
                _unit(raw),
                targets,
                bool(raw.get("stack")),
            )
        )
    return Dashboard(uid, key, str(data.get("title", uid)), tuple(items), _defaults(data))


def _unit(panel: dict[str, Any]) -> str:
    unit = (panel.get("fieldConfig") or {}).get("defaults", {}).get("unit")
    if not unit:
        axes = panel.get("yaxes") or [{}]
        unit = axes[0].get("format")
    return str(unit or "short")


def _defaults(data: dict[str, Any]) -> dict[str, str]:
    """What each template variable means when the page names no value: Grafana's "All" or its current value."""
    values: dict[str, str] = {}
    for var in data.get("templating", {}).get("list", []):
        name = str(var.get("name", ""))
        current = (var.get("current") or {}).get("value")
        if isinstance(current, list):
            current = "|".join(str(c) for c in current)
        if var.get("allValue") is not None and (current in (None, "$__all", "") or var.get("includeAll")):
            values[name] = str(var["allValue"])
        elif isinstance(current, str) and current and current != "$__all":
            values[name] = current
        else:
            values[name] = ".*"
    return values

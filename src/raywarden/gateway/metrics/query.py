"""From a panel request (Grafana's URL parameters) to the PromQL and time range sent to Prometheus.

Only Ray's own panel expressions are ever sent; the request picks a panel and fills template variables,
whose values are checked against a narrow alphabet, so no request can inject PromQL.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from raywarden.gateway.responses import Refusal

# Values of template variables: label values such as session names, node addresses, deployment names.
_VALUE = re.compile(r"[A-Za-z0-9_.:\-/ |*+]{0,200}")
_RELATIVE = re.compile(r"now(?:-(\d{1,6})([smhdw]))?")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_RANGE_S = 14 * 86400
MAX_POINTS = 240
# Prometheus scrapes Ray every few seconds; Grafana's $__rate_interval is at least four scrape intervals.
SCRAPE_INTERVAL_S = 10


@dataclass(frozen=True)
class TimeRange:
    start: float
    end: float

    @property
    def step(self) -> int:
        return max(SCRAPE_INTERVAL_S // 2, int((self.end - self.start) / MAX_POINTS) or 1)


def parse_time(value: str | None, default: str, now: float) -> float:
    """Grafana's ``from``/``to``: ``now``, ``now-5m``, or epoch milliseconds."""
    text = value or default
    if text.isdigit():
        return int(text) / 1000
    found = _RELATIVE.fullmatch(text)
    if not found:
        raise Refusal(400, f"unreadable time {text[:40]!r}", hint="use now, now-5m, now-1h or epoch milliseconds")
    amount, unit = found.groups()
    return now - (int(amount) * _UNITS[unit] if amount else 0)


def time_range(params: dict[str, str], now: float | None = None) -> TimeRange:
    now = time.time() if now is None else now
    start = parse_time(params.get("from"), "now-1h", now)
    end = parse_time(params.get("to"), "now", now)
    if not start < end or end - start > MAX_RANGE_S:
        raise Refusal(400, "the time range must be positive and at most 14 days")
    return TimeRange(start, end)


def variables(params: dict[str, str], defaults: dict[str, str]) -> dict[str, str]:
    """Each template variable's value: ``var-NAME`` from the request, else what "All" means for it."""
    values = dict(defaults)
    for key, value in params.items():
        if not key.startswith("var-"):
            continue
        name = key[4:]
        if value in ("", "$__all", "All"):
            continue  # Grafana's "All": the default
        if not _VALUE.fullmatch(value):
            raise Refusal(
                400,
                f"invalid value for template variable {name[:40]}",
                hint="values are label values: letters, digits and . _ - : / only",
            )
        if name in values:
            # Used as is inside a quoted PromQL matcher: the alphabet above has no quote or backslash.
            values[name] = value
    return values


def expand(expr: str, values: dict[str, str], window: TimeRange) -> str:
    """Ray's expression with Grafana's variables replaced: $__rate_interval, $__interval, $__range, $NAME."""
    step = window.step
    builtins = {
        "__rate_interval": f"{max(step + SCRAPE_INTERVAL_S, 4 * SCRAPE_INTERVAL_S)}s",
        "__interval": f"{step}s",
        "__interval_ms": str(step * 1000),
        "__range": f"{int(window.end - window.start)}s",
    }

    def replace(found: re.Match[str]) -> str:
        name = found.group(1) or found.group(2)
        if name in builtins:
            return builtins[name]
        return values.get(name, ".*")

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", replace, expr)

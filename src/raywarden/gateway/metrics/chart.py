"""A panel's series drawn as an SVG line chart with a legend table: server-side, no script, every label
escaped (series names come from task and actor names, which users choose)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from raywarden.gateway.metrics.prometheus import Series
from raywarden.gateway.metrics.query import TimeRange

WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 10, 24
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
MAX_LINES = 30


@dataclass(frozen=True)
class Line:
    name: str
    series: Series


def legend_name(template: str, series: Series) -> str:
    """Grafana's legendFormat: ``{{Label}}`` replaced by the series' label values."""
    if not template:
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(series.labels.items()) if k != "__name__")
        return f"{{{inner}}}" if inner else "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: series.labels.get(m.group(1), ""), template)


def format_value(value: float, unit: str) -> str:
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    if unit in ("%", "percent"):
        return f"{value:.1f}%"
    if unit in ("bytes", "decbytes", "Bps", "binBps"):
        scaled, name = value, "B"
        for name in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(scaled) < 1024 or name == "TiB":
                break
            scaled /= 1024
        return f"{scaled:.1f} {name}{'/s' if unit.endswith('ps') else ''}"
    if unit in ("s", "seconds"):
        return f"{value:.2f} s"
    if unit == "ms":
        return f"{value:.1f} ms"
    label = "" if unit in ("short", "none", "") else f" {unit}"
    if abs(value) >= 1e6:
        return f"{value / 1e6:.2f}M{label}"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.1f}k{label}"
    return f"{value:.4g}{label}"


def render(title: str, lines: Sequence[Line], window: TimeRange, unit: str) -> str:
    """An accessible SVG chart followed by a legend table (current and max of each line)."""
    lines = [line for line in lines if line.series.points][:MAX_LINES]
    if not lines:
        return f'<p class="muted">No data for {escape(title)} in this time range.</p>'
    values = [v for line in lines for _, v in line.series.points]
    low, high = min(0.0, min(values)), max(values)
    # Headroom, so that a line at its maximum is not drawn on the frame.
    high = high + 0.1 * (high - low) if high > low else low + 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(stamp: float) -> float:
        return LEFT + (stamp - window.start) / (window.end - window.start) * plot_w

    def y(value: float) -> float:
        return TOP + (1 - (value - low) / (high - low)) * plot_h

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    for fraction in (0.0, 0.5, 1.0):
        value = low + fraction * (high - low)
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            'stroke="#ddd" stroke-width="1"/>'
        )
        parts.append(
            f'<text x="{LEFT - 4}" y="{y(value) + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#555">{escape(format_value(value, unit))}</text>'
        )
    for fraction, anchor in ((0.0, "start"), (0.5, "middle"), (1.0, "end")):
        stamp = window.start + fraction * (window.end - window.start)
        label = dt.datetime.fromtimestamp(stamp, dt.timezone.utc).strftime("%H:%M:%S")
        parts.append(
            f'<text x="{x(stamp):.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}" font-size="11" '
            f'fill="#555">{label}</text>'
        )
    for index, line in enumerate(lines):
        color = PALETTE[index % len(PALETTE)]
        points = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in line.series.points)
        parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
        last_t, last_v = line.series.points[-1]
        parts.append(f'<circle cx="{x(last_t):.1f}" cy="{y(last_v):.1f}" r="2.5" fill="{color}"/>')
    parts.append("</svg>")
    rows = []
    for index, line in enumerate(lines):
        color = PALETTE[index % len(PALETTE)]
        current = line.series.points[-1][1]
        peak = max(v for _, v in line.series.points)
        swatch = (
            f'<svg class="swatch" viewBox="0 0 10 10" aria-hidden="true"><rect width="10" height="10" '
            f'fill="{color}"/></svg>'
        )
        rows.append(
            f"<tr><td>{swatch} {escape(line.name)}</td><td>{escape(format_value(current, unit))}</td>"
            f"<td>{escape(format_value(peak, unit))}</td></tr>"
        )
    legend = (
        '<table class="legend"><thead><tr><th scope="col">Series</th><th scope="col">Current</th>'
        f'<th scope="col">Max</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )
    return "".join(parts) + legend

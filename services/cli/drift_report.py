"""Rendering `sluice report drift`: a terminal table of the latest state, and a chart of one signal over time.

The chart is a self-contained SVG, or an HTML page around it, written with
the standard library, so the CLI needs no plotting package.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from pathlib import Path

from rich.table import Table
from rich.text import Text

from shared.drift_reports import DriftPoint, DriftState

CHART_SUFFIXES = (".svg", ".html")

# Chart geometry, in SVG user units (pixels at 100% zoom).
_WIDTH = 900
_HEIGHT = 420
_MARGIN_LEFT = 70
_MARGIN_RIGHT = 130
_MARGIN_TOP = 40
_MARGIN_BOTTOM = 50
# Matplotlib's default colour cycle ("tab10"), one colour per variant.
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def drift_table(states: list[DriftState]) -> Table:
    """Build the table of the latest comparison of each (variant, signal)."""
    table = Table(title="drift: latest comparison per variant and signal", show_header=True)
    for column in ("variant", "signal", "alert", "outcome", "statistic", "value", "threshold", "current window", "evaluated at"):
        table.add_column(column)
    for state in states:
        table.add_row(
            Text(state.variant),
            state.signal,
            Text("FIRING", style="bold red") if state.alert_active else Text("-"),
            state.outcome,
            state.statistic,
            _number(state.value),
            _number(state.threshold),
            f"{_time(state.current_start)} to {_time(state.current_end)}, {state.current_samples} samples",
            _time(state.evaluated_at),
        )
    return table


def write_chart(signal: str, points: list[DriftPoint], path: Path) -> None:
    """Write the alarm statistic of `signal` over time, one line per variant, to `path` (.svg or .html).

    Raises ValueError for another suffix or when `points` is empty.
    """
    if path.suffix not in CHART_SUFFIXES:
        raise ValueError(f"cannot write a chart to {path}: use a file name ending in .svg or .html")
    if not any(point.value is not None for point in points):
        raise ValueError(f"no drift results for signal {signal!r} yet. The drift service writes one per evaluation")
    svg = chart_svg(signal, points)
    if path.suffix == ".html":
        title = escape(f"drift of {signal}")
        svg = f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n<body>\n{svg}\n</body></html>\n'
    path.write_text(svg, encoding="utf-8")


def chart_svg(signal: str, points: list[DriftPoint]) -> str:
    """Return an SVG line chart of the points' values against evaluation time, with the threshold as a dashed line."""
    plotted = [point for point in points if point.value is not None]
    statistics = sorted({point.statistic for point in plotted})
    times = [point.evaluated_at.timestamp() for point in plotted]
    values = [point.value for point in plotted if point.value is not None]
    thresholds = sorted({point.threshold for point in plotted if point.threshold is not None})
    scale = _Scale(min(times), max(times), min(values + thresholds), max(values + thresholds))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<text x="{_MARGIN_LEFT}" y="20" font-size="14">{escape(signal)}: {escape(", ".join(statistics))}</text>',
        *_axes(scale, plotted),
    ]
    for threshold in thresholds:
        y = scale.y(threshold)
        parts.append(f'<line x1="{_MARGIN_LEFT}" x2="{_WIDTH - _MARGIN_RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#888" stroke-dasharray="6 4"/>')
        parts.append(f'<text x="{_WIDTH - _MARGIN_RIGHT + 5}" y="{y + 4:.1f}">threshold {_number(threshold)}</text>')
    variants = sorted({point.variant for point in plotted})
    for index, variant in enumerate(variants):
        colour = _COLOURS[index % len(_COLOURS)]
        parts.extend(_series(scale, [point for point in plotted if point.variant == variant], colour))
        parts.append(f'<text x="{_WIDTH - _MARGIN_RIGHT + 5}" y="{_MARGIN_TOP + 16 * index + 30}" fill="{colour}">{escape(variant)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


class _Scale:
    """Maps evaluation times and statistic values to SVG coordinates inside the margins."""

    def __init__(self, first_s: float, last_s: float, low: float, high: float) -> None:
        self._first_s = first_s
        # A single evaluation or a constant value would divide by zero, so a span of 1 takes its place.
        self._span_s = (last_s - first_s) or 1.0
        self._low = low
        self._range = (high - low) or 1.0

    def x(self, moment: datetime) -> float:
        share = (moment.timestamp() - self._first_s) / self._span_s
        return _MARGIN_LEFT + share * (_WIDTH - _MARGIN_LEFT - _MARGIN_RIGHT)

    def y(self, value: float) -> float:
        share = (value - self._low) / self._range
        return _HEIGHT - _MARGIN_BOTTOM - share * (_HEIGHT - _MARGIN_TOP - _MARGIN_BOTTOM)

    @property
    def low(self) -> float:
        return self._low

    @property
    def high(self) -> float:
        return self._low + self._range


def _axes(scale: _Scale, points: list[DriftPoint]) -> list[str]:
    bottom = _HEIGHT - _MARGIN_BOTTOM
    right = _WIDTH - _MARGIN_RIGHT
    return [
        f'<line x1="{_MARGIN_LEFT}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="black"/>',
        f'<line x1="{_MARGIN_LEFT}" x2="{_MARGIN_LEFT}" y1="{_MARGIN_TOP}" y2="{bottom}" stroke="black"/>',
        f'<text x="{_MARGIN_LEFT - 5}" y="{bottom}" text-anchor="end">{_number(scale.low)}</text>',
        f'<text x="{_MARGIN_LEFT - 5}" y="{_MARGIN_TOP + 4}" text-anchor="end">{_number(scale.high)}</text>',
        f'<text x="{_MARGIN_LEFT}" y="{bottom + 20}">{_time(points[0].evaluated_at)}</text>',
        f'<text x="{right}" y="{bottom + 20}" text-anchor="end">{_time(points[-1].evaluated_at)}</text>',
        f'<text x="{(_MARGIN_LEFT + right) / 2}" y="{bottom + 40}" text-anchor="middle">evaluated at (UTC). Filled dots: alert active</text>',
    ]


def _series(scale: _Scale, points: list[DriftPoint], colour: str) -> list[str]:
    coordinates = [(scale.x(point.evaluated_at), scale.y(point.value or 0.0), point.alert_active) for point in points]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _active in coordinates)
    parts = [f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>']
    for x, y, active in coordinates:
        fill = colour if active else "white"
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{fill}" stroke="{colour}"/>')
    return parts


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")

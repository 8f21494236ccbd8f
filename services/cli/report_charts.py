"""A line chart of a report's time series, written as a self-contained SVG or an HTML page around it.

The chart is written with the standard library, as the drift chart is, so
the CLI needs no plotting package. PNG would need matplotlib, which Sluice
does not install, so a .png file name is rejected.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from pathlib import Path

from services.cli.drift_report import CHART_SUFFIXES
from services.cli.report_tables import ChartPoint

# Chart geometry, in SVG user units (pixels at 100% zoom), as the drift chart's.
_WIDTH = 900
_HEIGHT = 420
_MARGIN_LEFT = 70
_MARGIN_RIGHT = 180
_MARGIN_TOP = 40
_MARGIN_BOTTOM = 50
# Matplotlib's default colour cycle ("tab10"), one colour per series.
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def check_chart_path(path: Path) -> None:
    """Raise ValueError unless `path` ends in .svg or .html."""
    if path.suffix == ".png":
        raise ValueError(
            f"cannot write {path}: PNG charts need matplotlib, which is not installed; "
            "use a file name ending in .html or .svg"
        )
    if path.suffix not in CHART_SUFFIXES:
        raise ValueError(f"cannot write a chart to {path}: use a file name ending in .html or .svg")


def write_series_chart(title: str, points: list[ChartPoint], path: Path) -> None:
    """Write one line per series of `points` against bucket start to `path` (.svg or .html).

    Raises ValueError for another suffix or when no point has a value.
    """
    check_chart_path(path)
    plotted = [(series, moment, value) for series, moment, value in points if value is not None]
    if not plotted:
        raise ValueError(f"nothing to chart: the report has no values of {title} in this range")
    svg = series_svg(title, plotted)
    if path.suffix == ".html":
        svg = f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{escape(title)}</title></head>\n<body>\n{svg}\n</body></html>\n'
    path.write_text(svg, encoding="utf-8")


def series_svg(title: str, points: list[tuple[str, datetime, float]]) -> str:
    """Return an SVG line chart of the points, one coloured line and label per series."""
    times = [moment.timestamp() for _series, moment, _value in points]
    values = [value for _series, _moment, value in points]
    first_s, span_s = min(times), (max(times) - min(times)) or 1.0
    low, value_range = min(values + [0.0]), (max(values) - min(values + [0.0])) or 1.0
    plot_width = _WIDTH - _MARGIN_LEFT - _MARGIN_RIGHT
    plot_height = _HEIGHT - _MARGIN_TOP - _MARGIN_BOTTOM
    bottom = _HEIGHT - _MARGIN_BOTTOM
    right = _WIDTH - _MARGIN_RIGHT

    def x(moment: datetime) -> float:
        return _MARGIN_LEFT + (moment.timestamp() - first_s) / span_s * plot_width

    def y(value: float) -> float:
        return bottom - (value - low) / value_range * plot_height

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<text x="{_MARGIN_LEFT}" y="20" font-size="14">{escape(title)}</text>',
        f'<line x1="{_MARGIN_LEFT}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="black"/>',
        f'<line x1="{_MARGIN_LEFT}" x2="{_MARGIN_LEFT}" y1="{_MARGIN_TOP}" y2="{bottom}" stroke="black"/>',
        f'<text x="{_MARGIN_LEFT - 5}" y="{bottom}" text-anchor="end">{_number(low)}</text>',
        f'<text x="{_MARGIN_LEFT - 5}" y="{_MARGIN_TOP + 4}" text-anchor="end">{_number(low + value_range)}</text>',
        f'<text x="{_MARGIN_LEFT}" y="{bottom + 20}">{_time(min(m for _s, m, _v in points))}</text>',
        f'<text x="{right}" y="{bottom + 20}" text-anchor="end">{_time(max(m for _s, m, _v in points))}</text>',
        f'<text x="{(_MARGIN_LEFT + right) / 2}" y="{bottom + 40}" text-anchor="middle">bucket start (UTC)</text>',
    ]
    for index, name in enumerate(sorted({series for series, _moment, _value in points})):
        colour = _COLOURS[index % len(_COLOURS)]
        series_points = sorted((moment, value) for series, moment, value in points if series == name)
        path = " ".join(f"{x(moment):.1f},{y(value):.1f}" for moment, value in series_points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for moment, value in series_points:
            parts.append(f'<circle cx="{x(moment):.1f}" cy="{y(value):.1f}" r="3" fill="{colour}"/>')
        parts.append(f'<text x="{right + 5}" y="{_MARGIN_TOP + 16 * index + 10}" fill="{colour}">{escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _number(value: float) -> str:
    return f"{value:.4g}"


def _time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")

"""`sluice report experiment KEY`: the experiment report as tables, and a chart of each metric's interval per arm.

The chart has one panel per metric, with a bar per arm from the
interval's low end to its high end and a dot at the estimate. It is written
as SVG, or as an HTML page around the SVG, with the standard library, as the
other report charts are.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from rich.table import Table

from services.cli.report_charts import check_chart_path
from shared.experiment_analysis.report import ArmMetric, ExperimentReport, Interval, MetricResult

# Chart geometry, in SVG user units (pixels at 100% zoom).
_WIDTH = 760
_PANEL_HEADER = 28
_ROW_HEIGHT = 22
_PANEL_GAP = 18
_LABEL_WIDTH = 140
_VALUE_WIDTH = 200
_MARGIN = 16
# Matplotlib's default colour cycle ("tab10"), one colour per arm, as the other charts use.
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
_OUTCOME_STYLES = {"better": "green", "worse": "red", "inconclusive": "", "untested": "dim", "control": "bold"}


def arms_table(report: ExperimentReport) -> Table:
    """Return the table of each arm's weight, units and exposures."""
    table = Table(title=f"experiment {report.experiment}: arms (control: {report.control})")
    for column in ("arm", "weight", "units", "exposed units", "exposures", "units in 2+ arms"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for arm in report.arms:
        weight = "-" if arm.weight is None else f"{arm.weight:g}"
        table.add_row(arm.variant, weight, str(arm.units), str(arm.exposure_units), str(arm.exposures), str(arm.mixed_units))
    return table


def metrics_table(report: ExperimentReport) -> Table:
    """Return the table of every metric per arm: estimate, lifts against control with intervals, p-values, outcome."""
    confidence = f"{report.confidence:.0%}"
    table = Table(title=f"experiment {report.experiment}: metrics ({confidence} intervals)")
    for column in ("metric", "arm", "units", "estimate", "lift", "relative lift", "p", "adjusted p", "outcome"):
        table.add_column(column, justify="left" if column in ("metric", "arm", "outcome") else "right")
    for metric in report.metrics:
        for arm in metric.arms:
            table.add_row(*_metric_row(metric, arm))
    return table


def _metric_row(metric: MetricResult, arm: ArmMetric) -> list[str]:
    label = metric.key + (" (guardrail)" if metric.guardrail else "")
    outcome = arm.outcome if arm.note is None else f"{arm.outcome}: {arm.note}"
    style = _OUTCOME_STYLES[arm.outcome]
    return [
        label,
        arm.variant,
        str(arm.units),
        _interval(arm.estimate),
        _interval(arm.absolute_lift),
        _interval(arm.relative_lift, percent=True),
        _p_value(arm.p_value),
        _p_value(arm.adjusted_p_value),
        f"[{style}]{outcome}[/{style}]" if style else outcome,
    ]


def _interval(interval: Interval | None, *, percent: bool = False) -> str:
    if interval is None:
        return "-"
    if percent:
        return f"{interval.value:+.1%} [{interval.ci_low:+.1%}, {interval.ci_high:+.1%}]"
    return f"{interval.value:.4g} [{interval.ci_low:.4g}, {interval.ci_high:.4g}]"


def _p_value(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def summary_lines(report: ExperimentReport) -> list[str]:
    """Return the lines under the tables: the sample ratio check, the verdict and the multiple-comparison policy."""
    lines = []
    check = report.sample_ratio
    if check is None:
        lines.append("sample ratio check: not run (fewer than two arms with exposed units)")
    else:
        state = "MISMATCH" if check.mismatch else "ok"
        lines.append(
            f"sample ratio check: {state} (chi-square {check.statistic:.3g}, p = {check.p_value:.3g}, "
            f"flagged below {check.threshold_p_value:g}; observed {check.observed_units}, "
            f"expected {[round(units, 1) for units in check.expected_units]})"
        )
    lines.append(f"verdict: {report.verdict}")
    lines.append(f"multiple comparisons: {report.multiple_comparisons}")
    return lines


def write_interval_chart(report: ExperimentReport, path: Path) -> int:
    """Write each metric's estimate and interval per arm to `path` (.svg or .html); return how many intervals it drew.

    Raises ValueError for another suffix, or when no arm has an estimate.
    """
    check_chart_path(path)
    panels = [metric for metric in report.metrics if any(arm.estimate is not None for arm in metric.arms)]
    if not panels:
        raise ValueError(f"nothing to chart: no arm of experiment {report.experiment} has an estimate yet")
    svg = _chart_svg(report, panels)
    if path.suffix == ".html":
        title = escape(f"experiment {report.experiment}")
        svg = f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n<body>\n{svg}\n</body></html>\n'
    path.write_text(svg, encoding="utf-8")
    return sum(arm.estimate is not None for metric in panels for arm in metric.arms)


def _chart_svg(report: ExperimentReport, panels: list[MetricResult]) -> str:
    colours = {arm.variant: _COLOURS[index % len(_COLOURS)] for index, arm in enumerate(report.arms)}
    parts: list[str] = []
    top = _MARGIN
    for metric in panels:
        parts += _panel(metric, top, colours)
        top += _PANEL_HEADER + _ROW_HEIGHT * len(metric.arms) + _PANEL_GAP
    height = top + _MARGIN
    body = "\n".join(parts)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_WIDTH} {height}" font-family="sans-serif" font-size="12">\n{body}\n</svg>'
    )


def _panel(metric: MetricResult, top: int, colours: dict[str, str]) -> list[str]:
    intervals = [arm.estimate for arm in metric.arms if arm.estimate is not None]
    low = min(interval.ci_low for interval in intervals)
    high = max(interval.ci_high for interval in intervals)
    span = (high - low) or abs(high) or 1.0
    plot_left = _MARGIN + _LABEL_WIDTH
    plot_width = _WIDTH - plot_left - _VALUE_WIDTH - _MARGIN

    def x(value: float) -> float:
        return plot_left + (value - low) / span * plot_width

    title = metric.key + (" (guardrail)" if metric.guardrail else "")
    parts = [f'<text x="{_MARGIN}" y="{top + 16}" font-weight="bold">{escape(title)}</text>']
    for index, arm in enumerate(metric.arms):
        y = top + _PANEL_HEADER + index * _ROW_HEIGHT + _ROW_HEIGHT / 2
        parts.append(f'<text x="{_MARGIN}" y="{y + 4:.1f}">{escape(arm.variant)}</text>')
        if arm.estimate is None:
            parts.append(f'<text x="{plot_left}" y="{y + 4:.1f}" fill="#7f7f7f">no estimate</text>')
            continue
        colour = colours.get(arm.variant, _COLOURS[0])
        estimate = arm.estimate
        parts.append(
            f'<line x1="{x(estimate.ci_low):.1f}" y1="{y:.1f}" x2="{x(estimate.ci_high):.1f}" y2="{y:.1f}" '
            f'stroke="{colour}" stroke-width="4"/>'
        )
        parts.append(f'<circle cx="{x(estimate.value):.1f}" cy="{y:.1f}" r="5" fill="{colour}"/>')
        label = f"{estimate.value:.4g} [{estimate.ci_low:.4g}, {estimate.ci_high:.4g}] {arm.outcome}"
        parts.append(f'<text x="{_WIDTH - _VALUE_WIDTH - _MARGIN + 10}" y="{y + 4:.1f}">{escape(label)}</text>')
    return parts

"""Rendering `sluice report latency|throughput|cost|safety|errors|feedback` as terminal tables, and picking each report's chart series."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from pydantic import BaseModel
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from shared.analytics_reports import (
    CostReport,
    ErrorsReport,
    FeedbackReport,
    LatencyReport,
    Percentiles,
    SafetyReport,
    ThroughputReport,
)

REPORT_MODELS: dict[str, type[BaseModel]] = {
    "latency": LatencyReport,
    "throughput": ThroughputReport,
    "cost": CostReport,
    "safety": SafetyReport,
    "errors": ErrorsReport,
    "feedback": FeedbackReport,
}

# A chart point: the series it belongs to, the bucket start and the value.
ChartPoint = tuple[str, datetime, float | None]


def _time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _percentile_cells(percentiles: Percentiles) -> list[str]:
    return [_ms(percentiles.p50_ms), _ms(percentiles.p95_ms), _ms(percentiles.p99_ms)]


def _table(title: str, columns: list[str], text_columns: int = 3) -> Table:
    """Build a table whose first column (the bucket start) never wraps and whose columns after `text_columns` are numbers."""
    table = Table(title=title, show_header=True)
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index < text_columns else "right", no_wrap=index == 0)
    return table


def latency_tables(report: LatencyReport) -> Group:
    """Build one table per latency measure (TTFT, total, queue), so each fits an 80-column terminal."""
    tables = []
    for measure, title in (("ttft", "TTFT ms"), ("total", "total ms"), ("queue", "queue ms")):
        table = _table(f"{title} of completed generations", ["bucket (UTC)", "model", "variant", "samples", "p50", "p95", "p99"])
        for row in report.rows:
            percentiles: Percentiles = getattr(row, measure)
            cells = [_time(row.bucket_start), Text(row.model), Text(row.variant), str(percentiles.samples)]
            table.add_row(*cells, *_percentile_cells(percentiles))
        tables.append(table)
    return Group(*tables)


def throughput_table(report: ThroughputReport) -> Table:
    columns = ["bucket (UTC)", "model", "variant", "done", "req/s", "prompt tok", "output tok", "tok/s"]
    table = _table("throughput and token usage", columns)
    for row in report.rows:
        table.add_row(
            _time(row.bucket_start), Text(row.model), Text(row.variant), str(row.completed), f"{row.requests_per_s:.4f}",
            f"{row.prompt_tokens:,}", f"{row.output_tokens:,}", f"{row.tokens_per_s:.3f}",
        )
    return table


def cost_table(report: CostReport) -> Table:
    columns = ["bucket (UTC)", "model", "variant", "prompt tok", "output tok", "cost USD"]
    table = _table(f"cost (total ${report.total_usd:,.6f})", columns)
    for row in report.rows:
        table.add_row(
            _time(row.bucket_start), Text(row.model), Text(row.variant),
            f"{row.prompt_tokens:,}", f"{row.output_tokens:,}", f"{row.cost_usd:,.6f}",
        )
    return table


def safety_tables(report: SafetyReport) -> Group:
    """Build tables of actions per stage, refusals, each stage's actions per scanner and risk scores per scanner.

    Five tables rather than two, so each fits an 80-column terminal.
    """
    stages = _table("actions per stage", ["bucket (UTC)", "stage", "checked", "blocked", "flagged", "redacted"], 2)
    for stage in report.stages:
        stages.add_row(
            _time(stage.bucket_start), stage.stage, str(stage.checked), str(stage.blocked), str(stage.flagged),
            str(stage.redacted),
        )
    refusals = _table("outputs read as refusals", ["bucket (UTC)", "moderated", "refusals"], 1)
    for stage in report.stages:
        if stage.stage == "moderation":
            refusals.add_row(_time(stage.bucket_start), str(stage.checked), str(stage.refusals))
    action_columns = ["bucket (UTC)", "scanner", "runs", "blocks", "flags", "redactions"]
    actions = {stage: _table(f"{stage} actions by scanner", action_columns, 2) for stage in ("screening", "moderation")}
    risks = _table("risk scores by scanner", ["bucket (UTC)", "stage", "scanner", "mean risk", "max risk"])
    for row in report.scanners:
        start = _time(row.bucket_start)
        counts = [str(row.runs), str(row.blocks), str(row.flags), str(row.redactions)]
        actions[row.stage].add_row(start, Text(row.scanner), *counts)
        risks.add_row(start, row.stage, Text(row.scanner), f"{row.mean_risk_score:.3f}", f"{row.max_risk_score:.3f}")
    return Group(stages, refusals, *actions.values(), risks)


def errors_table(report: ErrorsReport) -> Table:
    table = _table("error and cancellation rates", ["bucket (UTC)", "outcome", "cause", "count", "rate"])
    for row in report.rows:
        table.add_row(_time(row.bucket_start), "requests", "", str(row.requests), "")
        table.add_row(_time(row.bucket_start), "failed", "all", str(row.failed), f"{row.error_rate:.2%}")
        table.add_row(_time(row.bucket_start), "cancelled", "all", str(row.cancelled), f"{row.cancellation_rate:.2%}")
    for cause in report.causes:
        table.add_row(_time(cause.bucket_start), cause.outcome, Text(cause.cause), str(cause.count), "")
    return table


def _count_and_mean(count: int, mean: float | None, mean_format: str) -> str:
    return "0" if mean is None else f"{count} ({mean:{mean_format}})"


def feedback_table(report: FeedbackReport) -> Table:
    """Build one table whose cells show a count and, in brackets, its mean, rate or sum, so it fits 80 columns."""
    columns = ["bucket (UTC)", "variant", "ratings (mean)", "thumbs (up)", "conv. (rate)", "values (sum)"]
    table = _table("feedback by kind", columns, 2)
    for row in report.rows:
        table.add_row(
            _time(row.bucket_start), Text(row.variant or "(none)"),
            _count_and_mean(row.ratings, row.mean_rating, ".2f"),
            _count_and_mean(row.thumbs, row.thumbs_up_rate, ".0%"),
            _count_and_mean(row.conversions, row.conversion_rate, ".0%"),
            _count_and_mean(row.value_count, row.value_sum if row.value_count else None, ",.2f"),
        )
    return table


REPORT_TABLES: dict[str, Callable[..., RenderableType]] = {
    "latency": latency_tables,
    "throughput": throughput_table,
    "cost": cost_table,
    "safety": safety_tables,
    "errors": errors_table,
    "feedback": feedback_table,
}


def _latency_points(report: LatencyReport) -> list[ChartPoint]:
    return [(f"{row.model}/{row.variant}", row.bucket_start, row.ttft.p95_ms) for row in report.rows]


def _throughput_points(report: ThroughputReport) -> list[ChartPoint]:
    return [(f"{row.model}/{row.variant}", row.bucket_start, row.tokens_per_s) for row in report.rows]


def _cost_points(report: CostReport) -> list[ChartPoint]:
    return [(f"{row.model}/{row.variant}", row.bucket_start, row.cost_usd) for row in report.rows]


def _safety_points(report: SafetyReport) -> list[ChartPoint]:
    return [(f"{row.stage}/{row.scanner}", row.bucket_start, float(row.blocks)) for row in report.scanners]


def _errors_points(report: ErrorsReport) -> list[ChartPoint]:
    points: list[ChartPoint] = [("error rate", row.bucket_start, row.error_rate) for row in report.rows]
    points += [("cancellation rate", row.bucket_start, row.cancellation_rate) for row in report.rows]
    return points


def _feedback_points(report: FeedbackReport) -> list[ChartPoint]:
    return [(row.variant or "(none)", row.bucket_start, row.mean_rating) for row in report.rows]


# The measure each report charts, and a function that returns its points.
REPORT_CHARTS: dict[str, tuple[str, Callable[..., list[ChartPoint]]]] = {
    "latency": ("TTFT p95 (ms)", _latency_points),
    "throughput": ("tokens per second", _throughput_points),
    "cost": ("cost (USD)", _cost_points),
    "safety": ("blocks per scanner", _safety_points),
    "errors": ("error and cancellation rate", _errors_points),
    "feedback": ("mean rating", _feedback_points),
}

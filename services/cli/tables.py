"""Rendering reports as terminal tables."""

from __future__ import annotations

from rich.table import Table

from shared.summary import LatencyPercentiles, TrafficSummary


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


def _latency_row(table: Table, name: str, latency: LatencyPercentiles) -> None:
    table.add_row(f"{name} p50", _ms(latency.p50_ms))
    table.add_row(f"{name} p95", _ms(latency.p95_ms))


def summary_table(summary: TrafficSummary, title: str) -> Table:
    """Build the table that `sluice demo` and `sluice report` both print."""
    table = Table(title=title, show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("requests", str(summary.requests))
    table.add_row("completed", str(summary.completed))
    table.add_row("blocked", str(summary.blocked))
    for scanner, count in sorted(summary.blocked_by.items()):
        table.add_row(f"  blocked by {scanner}", str(count))
    table.add_row("failed", str(summary.failed))
    for error_code, count in sorted(summary.failed_by.items()):
        table.add_row(f"  failed: {error_code}", str(count))
    table.add_row("expired", str(summary.expired))
    table.add_row("cancelled", str(summary.cancelled))
    if summary.in_progress:
        table.add_row("in progress", str(summary.in_progress))
    _latency_row(table, "TTFT", summary.ttft)
    _latency_row(table, "total latency", summary.total_latency)
    return table

"""Synthetic traffic for the validation scenarios, from the helper that the drift benchmark also uses."""

from __future__ import annotations

from load_tests.drift_traffic import PromptPool, Traffic, evaluate_windows
from services.drift.alarms import Alert
from services.drift.config import DriftSettings

__all__ = ["PromptPool", "Traffic", "run_windows"]


def run_windows(
    settings: DriftSettings, reference: Traffic, windows: list[Traffic], *, variants: tuple[str, ...], seed: int
) -> list[list[Alert]]:
    """Freeze a reference drawn from `reference`, then return the alerts of one window per entry of `windows`."""
    reports = evaluate_windows(settings, reference, windows, variants=variants, seed=seed)
    return [list(report.alerts) for report in reports]

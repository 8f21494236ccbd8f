"""The alarm rules: the multiple-comparison correction across signals and variants, hysteresis, and the alert a runner publishes.

A signal fires in a window when every one of its alarm statistics crosses
its threshold. An alert is raised after `raise_after_windows` consecutive
firing windows and resolved after `resolve_after_windows` consecutive quiet
ones (see `config` for the defaults and why).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from services.drift.results import StatisticResult
from services.drift.windows import WindowBounds
from shared.drift_signals import Signal


class AlertStatus(StrEnum):
    """Whether an alert starts or ends, in Prometheus Alertmanager's terms."""

    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class Alert:
    """A drift alert for one signal of one variant, to publish on `alerts.drift`.

    `statistic`, `value` and `threshold` come from the signal's first alarm
    statistic. `statistics` contains every statistic of the window that
    changed the alert's status.
    """

    status: AlertStatus
    variant: str
    signal: Signal
    statistic: str
    value: float
    threshold: float
    reference: WindowBounds
    current: WindowBounds
    statistics: tuple[StatisticResult, ...]

    def to_json_dict(self) -> dict[str, Any]:
        """Return the alert as JSON-ready values, with times in ISO 8601."""
        return {
            "status": str(self.status),
            "variant": self.variant,
            "signal": str(self.signal),
            "statistic": self.statistic,
            "value": self.value,
            "threshold": self.threshold,
            "reference": _bounds_json(self.reference),
            "current": _bounds_json(self.current),
            "statistics": [_statistic_json(statistic) for statistic in self.statistics],
        }


def bonferroni_alpha(family_alpha: float, test_count: int) -> float:
    """Return the per-test significance level that keeps the chance of any false rejection among `test_count` tests at most `family_alpha`."""
    return family_alpha / max(test_count, 1)


class Hysteresis:
    """The firing/resolved state of every (variant, signal), updated once per compared window.

    A window that contradicts the current state extends a streak, and one
    that agrees with it ends the streak. The state flips when the streak
    reaches `raise_after_windows` (to firing) or `resolve_after_windows`
    (to resolved).
    """

    def __init__(self, *, raise_after_windows: int, resolve_after_windows: int) -> None:
        self._raise_after_windows = raise_after_windows
        self._resolve_after_windows = resolve_after_windows
        self._firing: dict[tuple[str, Signal], bool] = {}
        self._streaks: dict[tuple[str, Signal], int] = {}

    def observe(self, variant: str, signal: Signal, *, fired: bool) -> AlertStatus | None:
        """Record one compared window, and return the new status if it flipped, else None."""
        key = (variant, signal)
        firing = self._firing.get(key, False)
        streak = self._streaks.get(key, 0) + 1 if fired != firing else 0

        needed = self._resolve_after_windows if firing else self._raise_after_windows
        if streak < needed:
            self._streaks[key] = streak
            return None

        self._firing[key] = not firing
        self._streaks[key] = 0
        return AlertStatus.RESOLVED if firing else AlertStatus.FIRING

    def is_firing(self, variant: str, signal: Signal) -> bool:
        return self._firing.get((variant, signal), False)


def _bounds_json(bounds: WindowBounds) -> dict[str, Any]:
    return {"start": bounds.start.isoformat(), "end": bounds.end.isoformat(), "sample_count": bounds.sample_count}


def _statistic_json(statistic: StatisticResult) -> dict[str, Any]:
    return {
        "name": statistic.name,
        "value": statistic.value,
        "threshold": statistic.threshold,
        "direction": str(statistic.direction),
        "fired": statistic.fired,
    }

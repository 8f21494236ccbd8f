"""The result of one statistic comparing a reference window with a current one."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Direction(StrEnum):
    """The side of its threshold on which a statistic fires."""

    # Distances and scores such as PSI or ROC AUC.
    ABOVE = "above"
    # p-values: a small p-value rejects "both windows come from one distribution".
    BELOW = "below"


@dataclass(frozen=True)
class StatisticResult:
    """One statistic's value, its threshold and whether it fired.

    `threshold` is None for a statistic reported for context only (a rate, a
    centroid distance), which never fires and takes no part in the alarm.
    """

    name: str
    value: float
    threshold: float | None
    direction: Direction
    fired: bool

    @classmethod
    def compare(cls, name: str, value: float, threshold: float, direction: Direction) -> StatisticResult:
        """Build a result that fires when `value` is strictly past `threshold` in `direction`."""
        value = float(value)
        fired = value > threshold if direction is Direction.ABOVE else value < threshold
        return cls(name=name, value=value, threshold=threshold, direction=direction, fired=fired)

    @classmethod
    def context(cls, name: str, value: float) -> StatisticResult:
        """Build a result that is reported but never fires."""
        return cls(name=name, value=float(value), threshold=None, direction=Direction.ABOVE, fired=False)

    @property
    def is_alarm(self) -> bool:
        """Whether this statistic takes part in the signal's alarm decision."""
        return self.threshold is not None

"""The search for the highest arrival rate that passes a check.

It doubles up from a pass or halves down from a fail, then bisects between the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Bisection stops once the gap between the highest pass and the lowest fail
# is at most this share of the pass, or the absolute step below.
RELATIVE_RESOLUTION = 0.1
MIN_STEP_RPS = 10.0


@dataclass
class RateSearch:
    """The highest rate seen to pass and the lowest seen to fail, and the next rate worth trying.

    `max_rate_rps` caps the doubling, so a system that passes everything still
    ends the search. When noise makes a rate pass above one that failed, the
    search stops and both figures stay as measured.
    """

    max_rate_rps: float
    passed_rps: float | None = None
    failed_rps: float | None = None

    def record(self, rate_rps: float, passed: bool) -> None:
        if passed:
            self.passed_rps = rate_rps if self.passed_rps is None else max(self.passed_rps, rate_rps)
        else:
            self.failed_rps = rate_rps if self.failed_rps is None else min(self.failed_rps, rate_rps)

    def next_rate(self) -> float | None:
        """Return the rate to measure next, or None when the bracket is narrow enough, inverted or at the cap."""
        low, high = self.passed_rps, self.failed_rps
        if low is None:
            return None if high is None or high / 2 < MIN_STEP_RPS else float(math.floor(high / 2))
        if high is None:
            return min(2 * low, self.max_rate_rps) if low < self.max_rate_rps else None
        if high - low <= max(MIN_STEP_RPS, RELATIVE_RESOLUTION * low):
            return None
        return float(round((low + high) / 2))

"""Statistics for rate signals: a test of whether the share of requests with an outcome (refused, blocked, converted) changed.

NOTE: unlike a numeric signal, a rate has no effect-size gate, so in windows
of tens of thousands of requests a change of a fraction of a percentage
point is significant and fires.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from services.drift.results import Direction, StatisticResult

CHI2_P_VALUE = "chi2_p_value"
FISHER_EXACT_P_VALUE = "fisher_exact_p_value"
REFERENCE_RATE = "reference_rate"
CURRENT_RATE = "current_rate"

# Cochran's rule for the chi-square approximation on a 2x2 table: every
# expected count at least 5. A rare outcome (a block rate of 0.2% is 2
# blocks in 1,000 requests) breaks it, and Fisher's exact test replaces it.
CHI2_MIN_EXPECTED_COUNT = 5.0


def rate_test(reference: np.ndarray, current: np.ndarray, *, alpha: float) -> tuple[StatisticResult, ...]:
    """Test whether the outcome rate differs between two windows of 0/1 outcomes.

    Returns the test's p-value (fires below `alpha`, the per-test level after
    the multiple-comparison correction), then both rates for context. The
    test is the chi-square test of independence on the 2x2 table
    (scipy.stats.chi2_contingency, with Yates' continuity correction), or
    Fisher's exact test when an expected count is below 5.
    """
    table = _contingency_table(reference, current)
    return (
        _independence_test(table, alpha),
        StatisticResult.context(REFERENCE_RATE, table[0, 0] / table[0].sum()),
        StatisticResult.context(CURRENT_RATE, table[1, 0] / table[1].sum()),
    )


def _contingency_table(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    reference_events = int(np.count_nonzero(reference))
    current_events = int(np.count_nonzero(current))
    return np.array(
        [
            [reference_events, len(reference) - reference_events],
            [current_events, len(current) - current_events],
        ]
    )


def _independence_test(table: np.ndarray, alpha: float) -> StatisticResult:
    # With no events (or no non-events) in either window the rates are equal,
    # and chi2_contingency rejects the table for its zero expected counts.
    if table[:, 0].sum() == 0 or table[:, 1].sum() == 0:
        return StatisticResult.compare(CHI2_P_VALUE, 1.0, alpha, Direction.BELOW)

    expected = stats.contingency.expected_freq(table)
    if expected.min() < CHI2_MIN_EXPECTED_COUNT:
        p_value = stats.fisher_exact(table).pvalue
        return StatisticResult.compare(FISHER_EXACT_P_VALUE, p_value, alpha, Direction.BELOW)

    p_value = stats.chi2_contingency(table).pvalue
    return StatisticResult.compare(CHI2_P_VALUE, p_value, alpha, Direction.BELOW)

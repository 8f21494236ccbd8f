"""The Holm–Bonferroni adjustment of p-values, and the multiple-comparison policy of an experiment report.

Policy:
- Success metrics: one family per report, made of every (non-guardrail
  metric, treatment arm) pair. Holm's step-down adjustment runs over the
  family's two-sided p-values, and a lift is significant when its adjusted
  p-value is below alpha. That bounds the family-wise error rate (the chance
  of any false winner in the report) at alpha, whatever the dependence
  between the tests, and rejects at least as often as plain Bonferroni.
- Guardrail metrics: each (guardrail, treatment arm) pair is tested
  one-sided in the harmful direction at alpha, without correction, because
  missing a harm costs more than a false alarm.
- A comparison without a p-value (an undefined test) is left out of the
  family, so it does not raise the correction of the others.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def holm_adjust(p_values: Sequence[float]) -> tuple[float, ...]:
    """Return the Holm-adjusted p-values, in the order given.

    Sorted ascending, the i-th smallest of m p-values (i from 1) becomes
    min(1, max over j ≤ i of (m - j + 1)·p_(j)), so the adjusted values keep
    the order of the raw ones. Raises ValueError for a value outside [0, 1]
    or NaN.
    """
    for index, p_value in enumerate(p_values):
        if not 0 <= p_value <= 1:
            raise ValueError(f"p_values[{index}] is {p_value!r}, but a p-value must be between 0 and 1")

    count = len(p_values)
    order = sorted(range(count), key=lambda index: p_values[index])
    adjusted = [math.nan] * count
    running_max = 0.0
    for rank, index in enumerate(order):
        running_max = max(running_max, (count - rank) * p_values[index])
        adjusted[index] = min(1.0, running_max)
    return tuple(adjusted)

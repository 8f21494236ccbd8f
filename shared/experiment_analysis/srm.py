"""The sample-ratio-mismatch (SRM) check: do the arms' unit counts match the configured weights?

A mismatch means assignment or exposure logging is broken: a crash in one
arm, bots, or a filter that drops one variant's units. The metric
comparisons are then biased however significant they look, so a report
gives no verdict while the flag is up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from growthbook.core import WEIGHT_SUM_MAX, WEIGHT_SUM_MIN
from scipy import stats

from shared.experiment_analysis.errors import InsufficientDataError

# GrowthBook's default: a mismatch is flagged below p = 0.001 rather than
# 0.05, because real mismatches are rare and each alarm costs a manual
# investigation. With 5% of experiments truly mismatched, about 49% of the
# alarms at 0.05 would be false and about 2% at 0.001
# (https://docs.growthbook.io/statistics/srm).
SRM_P_VALUE_THRESHOLD = 0.001


@dataclass(frozen=True, slots=True)
class SampleRatioCheck:
    """The chi-square goodness-of-fit test of the units per arm against the weights, in arm order."""

    observed_units: tuple[int, ...]
    expected_units: tuple[float, ...]
    statistic: float
    degrees_of_freedom: int
    p_value: float
    mismatch: bool


def check_sample_ratio(observed_units: Sequence[int], weights: Sequence[float]) -> SampleRatioCheck:
    """Test whether the units per arm fit the arms' weights, and flag a mismatch when p < SRM_P_VALUE_THRESHOLD.

    `weights` are the experiment's variant weights in the same order. They
    must sum to 1 within the tolerance that the growthbook SDK accepts (0.99
    to 1.01 in 4.0.0), because the SDK buckets units on such weights as
    given. They are normalized so that the expected counts add up to the
    observed total. A coverage below 1 scales every arm alike and changes
    nothing here.
    Raises ValueError for mismatched lengths, fewer than 2 arms, negative
    counts or non-positive weights, and InsufficientDataError when no unit
    was observed.
    """
    _check_arms(observed_units, weights)
    total_units = sum(observed_units)
    if total_units == 0:
        raise InsufficientDataError("no units were observed in any arm, so the split cannot be tested")

    total_weight = sum(weights)
    expected_units = tuple(total_units * weight / total_weight for weight in weights)
    result = stats.chisquare(observed_units, expected_units)
    return SampleRatioCheck(
        observed_units=tuple(observed_units),
        expected_units=expected_units,
        statistic=float(result.statistic),
        degrees_of_freedom=len(observed_units) - 1,
        p_value=float(result.pvalue),
        mismatch=bool(result.pvalue < SRM_P_VALUE_THRESHOLD),
    )


def _check_arms(observed_units: Sequence[int], weights: Sequence[float]) -> None:
    if len(observed_units) != len(weights):
        raise ValueError(
            f"observed_units has {len(observed_units)} arms but weights has {len(weights)}: "
            "pass one count and one weight per variant, in the same order"
        )
    if len(weights) < 2:
        raise ValueError(f"the experiment has {len(weights)} arm(s), but a split needs at least 2")
    for index, count in enumerate(observed_units):
        if count < 0:
            raise ValueError(f"observed_units[{index}] is {count}, but a unit count must be 0 or more")
    _check_weights(weights)


def _check_weights(weights: Sequence[float]) -> None:
    for index, weight in enumerate(weights):
        if not weight > 0:
            raise ValueError(
                f"weights[{index}] is {weight!r}, but every weight must be above 0: "
                "leave a variant that receives no traffic out of the check"
            )
    total = sum(weights)
    if not WEIGHT_SUM_MIN <= total <= WEIGHT_SUM_MAX:
        raise ValueError(
            f"weights sum to {total:g}, but they must sum to 1 (from {WEIGHT_SUM_MIN} to {WEIGHT_SUM_MAX}, "
            "as the growthbook SDK accepts)"
        )

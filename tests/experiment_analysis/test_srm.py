"""The sample-ratio-mismatch check against scipy and on injected splits."""

from __future__ import annotations

import pytest
from scipy import stats

from shared.experiment_analysis.errors import InsufficientDataError
from shared.experiment_analysis.srm import SRM_P_VALUE_THRESHOLD, check_sample_ratio


def test_srm_matches_scipy_chisquare() -> None:
    observed = [3310, 3402, 3288]
    weights = [0.34, 0.33, 0.33]

    check = check_sample_ratio(observed, weights)
    reference = stats.chisquare(observed, [10000 * weight for weight in weights])

    assert check.statistic == pytest.approx(reference.statistic, rel=1e-9)
    assert check.p_value == pytest.approx(reference.pvalue, rel=1e-9)
    assert check.degrees_of_freedom == 2


def test_srm_flags_45_55_split() -> None:
    # (900 - 1000)²/1000 + (1100 - 1000)²/1000 = 20, p ≈ 7.7e-6.
    check = check_sample_ratio([900, 1100], [0.5, 0.5])

    assert check.statistic == pytest.approx(20.0)
    assert check.p_value == pytest.approx(stats.chi2.sf(20.0, 1), rel=1e-9)
    assert check.p_value < SRM_P_VALUE_THRESHOLD
    assert check.mismatch


def test_srm_fair_split_is_not_flagged() -> None:
    check = check_sample_ratio([1012, 988], [0.5, 0.5])

    assert check.p_value > 0.5
    assert not check.mismatch


def test_srm_normalizes_weights_within_growthbook_tolerance() -> None:
    # GrowthBook buckets on weights summing to 0.99 as given, so units fall
    # 1/3 per arm of the ones assigned.
    check = check_sample_ratio([1000, 1000, 1000], [0.33, 0.33, 0.33])

    assert check.expected_units == pytest.approx((1000.0, 1000.0, 1000.0))
    assert check.statistic == pytest.approx(0.0, abs=1e-9)


def test_srm_rejects_weights_not_summing_to_one() -> None:
    with pytest.raises(ValueError, match="weights sum to 0.95"):
        check_sample_ratio([500, 450], [0.5, 0.45])


def test_srm_rejects_zero_weight() -> None:
    with pytest.raises(ValueError, match=r"weights\[1\] is 0.0"):
        check_sample_ratio([500, 0, 500], [0.5, 0.0, 0.5])


def test_srm_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="observed_units has 3 arms but weights has 2"):
        check_sample_ratio([1, 2, 3], [0.5, 0.5])


def test_srm_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match=r"observed_units\[0\] is -5"):
        check_sample_ratio([-5, 10], [0.5, 0.5])


def test_srm_rejects_single_arm() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        check_sample_ratio([100], [1.0])


def test_srm_without_units_is_insufficient() -> None:
    with pytest.raises(InsufficientDataError, match="no units"):
        check_sample_ratio([0, 0], [0.5, 0.5])

"""The arm summaries: built from per-unit arrays or from the store's sums, and their input checks."""

from __future__ import annotations

import numpy as np
import pytest

from shared.experiment_analysis.errors import InsufficientDataError
from shared.experiment_analysis.summaries import BinomialSummary, MeanSummary, RatioSummary


def unit_values(seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    requests = 1.0 + rng.poisson(2.0, size=count)
    return rng.gamma(shape=2.0 * requests, scale=150.0), requests


def test_binomial_from_outcomes_counts_successes() -> None:
    summary = BinomialSummary.from_outcomes(np.array([True, False, True, True]))

    assert summary == BinomialSummary(units=4, successes=3)


def test_binomial_from_outcomes_rejects_other_values() -> None:
    with pytest.raises(ValueError, match="must be 0 or 1"):
        BinomialSummary.from_outcomes(np.array([0, 1, 2]))


@pytest.mark.parametrize(("units", "successes", "field"), [(-1, 0, "units"), (10, -2, "successes")])
def test_binomial_rejects_negative_counts(units: int, successes: int, field: str) -> None:
    with pytest.raises(ValueError, match=f"{field} is -"):
        BinomialSummary(units=units, successes=successes)


def test_binomial_rejects_more_successes_than_units() -> None:
    with pytest.raises(ValueError, match="successes is 11, more than units"):
        BinomialSummary(units=10, successes=11)


def test_mean_from_values_uses_sample_variance() -> None:
    values = np.array([1.0, 2.0, 4.0, 9.0])

    summary = MeanSummary.from_values(values)

    assert summary.units == 4
    assert summary.mean == 4.0
    assert summary.variance == pytest.approx(np.var(values, ddof=1), rel=1e-12)


def test_mean_from_sums_matches_from_values() -> None:
    values, _ = unit_values(1, 500)

    from_sums = MeanSummary.from_sums(len(values), values.sum(), (values**2).sum())
    from_values = MeanSummary.from_values(values)

    assert from_sums.mean == pytest.approx(from_values.mean, rel=1e-12)
    assert from_sums.variance == pytest.approx(from_values.variance, rel=1e-9)


def test_mean_of_equal_values_has_zero_variance() -> None:
    # 0.1 has no exact binary form, so a computed mean leaves a trace of variance.
    values = np.full(7, 0.1)

    assert MeanSummary.from_values(values).variance == 0.0
    assert MeanSummary.from_sums(7, values.sum(), (values**2).sum()).variance == 0.0


def test_mean_from_inconsistent_sums_is_rejected() -> None:
    with pytest.raises(ValueError, match="sum_xx is 10.0, less than the square of the sum"):
        MeanSummary.from_sums(units=4, sum_x=20.0, sum_xx=10.0)


def test_mean_of_one_unit_is_insufficient() -> None:
    with pytest.raises(InsufficientDataError, match="has 1 unit"):
        MeanSummary(units=1, mean=3.0, variance=0.0)


def test_mean_from_one_value_is_insufficient() -> None:
    with pytest.raises(InsufficientDataError, match="has 1 unit"):
        MeanSummary.from_values(np.array([3.0]))


def test_mean_rejects_negative_variance() -> None:
    with pytest.raises(ValueError, match="variance is -1.0"):
        MeanSummary(units=5, mean=3.0, variance=-1.0)


def test_mean_rejects_nan_values() -> None:
    with pytest.raises(ValueError, match="NaN or infinite"):
        MeanSummary.from_values(np.array([1.0, np.nan, 2.0]))


def test_mean_rejects_two_dimensional_values() -> None:
    with pytest.raises(ValueError, match="one-dimensional"):
        MeanSummary.from_values(np.ones((3, 2)))


def test_ratio_from_values_matches_numpy() -> None:
    numerators, denominators = unit_values(2, 300)

    summary = RatioSummary.from_values(numerators, denominators)

    assert summary.numerator_mean == pytest.approx(numerators.mean(), rel=1e-12)
    assert summary.denominator_mean == pytest.approx(denominators.mean(), rel=1e-12)
    assert summary.numerator_variance == pytest.approx(numerators.var(ddof=1), rel=1e-12)
    assert summary.denominator_variance == pytest.approx(denominators.var(ddof=1), rel=1e-12)
    assert summary.covariance == pytest.approx(np.cov(numerators, denominators)[0, 1], rel=1e-12)


def test_ratio_from_sums_matches_from_values() -> None:
    x, y = unit_values(3, 800)

    from_sums = RatioSummary.from_sums(len(x), x.sum(), (x * x).sum(), y.sum(), (y * y).sum(), (x * y).sum())
    from_values = RatioSummary.from_values(x, y)

    assert from_sums.numerator_variance == pytest.approx(from_values.numerator_variance, rel=1e-9)
    assert from_sums.denominator_variance == pytest.approx(from_values.denominator_variance, rel=1e-9)
    assert from_sums.covariance == pytest.approx(from_values.covariance, rel=1e-9)


def test_ratio_from_sums_with_constant_numerators() -> None:
    x, y = np.full(9, 0.3), 1.0 + np.arange(9.0)

    summary = RatioSummary.from_sums(9, x.sum(), (x * x).sum(), y.sum(), (y * y).sum(), (x * y).sum())

    assert summary.numerator_variance == 0.0
    assert summary.covariance == 0.0


def test_ratio_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="numerators has 3 values but denominators has 2"):
        RatioSummary.from_values(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0]))


def test_ratio_rejects_covariance_beyond_cauchy_schwarz() -> None:
    with pytest.raises(ValueError, match="covariance is 5.0"):
        RatioSummary(
            units=10,
            numerator_mean=1.0,
            denominator_mean=1.0,
            numerator_variance=4.0,
            denominator_variance=1.0,
            covariance=5.0,
        )

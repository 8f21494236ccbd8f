"""The comparisons against scipy and statsmodels on the same data, by hand on small examples, and at their edges."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint, proportions_ztest

from shared.experiment_analysis.errors import InsufficientDataError
from shared.experiment_analysis.statistics import (
    Alternative,
    SignificanceTest,
    compare_means,
    compare_proportions,
    compare_ratios,
    estimate_mean,
    estimate_proportion,
    estimate_ratio,
)
from shared.experiment_analysis.summaries import BinomialSummary, MeanSummary, RatioSummary

# Agreement with the reference libraries: relative 1e-9, so that tiny
# p-values must agree in their leading digits too.
REL = 1e-9
ABS = 1e-15


def close(expected: float) -> object:
    return pytest.approx(float(expected), rel=REL, abs=ABS)


def latencies(seed: int, count: int, sigma: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(mean=6.0, sigma=sigma, size=count)


# Welch's t-test


def test_welch_matches_scipy_ttest_ind() -> None:
    control, treatment = latencies(1, 137), latencies(2, 211, sigma=1.2)

    comparison = compare_means(MeanSummary.from_values(control), MeanSummary.from_values(treatment))
    reference = stats.ttest_ind(treatment, control, equal_var=False)

    assert comparison.test is SignificanceTest.WELCH_T
    assert comparison.statistic == close(reference.statistic)
    assert comparison.p_value == close(reference.pvalue)
    assert comparison.degrees_of_freedom == close(reference.df)


def test_welch_lift_interval_matches_scipy() -> None:
    control, treatment = latencies(3, 90), latencies(4, 120)

    comparison = compare_means(MeanSummary.from_values(control), MeanSummary.from_values(treatment), confidence=0.9)
    reference = stats.ttest_ind(treatment, control, equal_var=False).confidence_interval(confidence_level=0.9)

    assert comparison.absolute_lift.value == close(treatment.mean() - control.mean())
    assert comparison.absolute_lift.ci_low == close(reference.low)
    assert comparison.absolute_lift.ci_high == close(reference.high)


def test_welch_matches_scipy_ttest_ind_from_stats() -> None:
    control = MeanSummary(units=400, mean=812.5, variance=1.9e5)
    treatment = MeanSummary(units=380, mean=771.0, variance=1.4e5)

    comparison = compare_means(control, treatment)
    reference = stats.ttest_ind_from_stats(
        treatment.mean, np.sqrt(treatment.variance), treatment.units,
        control.mean, np.sqrt(control.variance), control.units,
        equal_var=False,
    )

    assert comparison.statistic == close(reference.statistic)
    assert comparison.p_value == close(reference.pvalue)


def test_welch_one_sided_matches_scipy() -> None:
    control, treatment = latencies(5, 150), latencies(6, 150)
    comparison = compare_means(MeanSummary.from_values(control), MeanSummary.from_values(treatment))

    greater = stats.ttest_ind(treatment, control, equal_var=False, alternative="greater")
    less = stats.ttest_ind(treatment, control, equal_var=False, alternative="less")

    assert comparison.one_sided_p_value(Alternative.GREATER) == close(greater.pvalue)
    assert comparison.one_sided_p_value(Alternative.LESS) == close(less.pvalue)


def test_mean_interval_matches_scipy_one_sample_t() -> None:
    values = latencies(7, 60)

    estimate = estimate_mean(MeanSummary.from_values(values))
    reference = stats.ttest_1samp(values, 0.0).confidence_interval(confidence_level=0.95)

    assert estimate.ci_low == close(reference.low)
    assert estimate.ci_high == close(reference.high)


def test_mean_zero_variance_in_both_arms_is_untested() -> None:
    control = MeanSummary.from_values(np.full(10, 5.0))
    treatment = MeanSummary.from_values(np.full(12, 7.0))

    comparison = compare_means(control, treatment)

    assert comparison.p_value is None
    assert comparison.statistic is None
    assert comparison.degrees_of_freedom is None
    assert "zero variance" in comparison.untested_reason
    assert comparison.absolute_lift.value == 2.0
    assert comparison.absolute_lift.ci_low == comparison.absolute_lift.ci_high == 2.0
    assert comparison.relative_lift.value == pytest.approx(0.4)
    assert comparison.one_sided_p_value(Alternative.GREATER) is None


# scipy warns that the constant control arm's variance lost precision, but it is exactly 0.
@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")
def test_mean_zero_variance_in_one_arm_is_tested() -> None:
    control = MeanSummary.from_values(np.full(10, 5.0))
    treatment_values = latencies(8, 25)

    comparison = compare_means(control, MeanSummary.from_values(treatment_values))
    reference = stats.ttest_ind(treatment_values, np.full(10, 5.0), equal_var=False)

    assert comparison.degrees_of_freedom == close(24)
    assert comparison.p_value == close(reference.pvalue)
    assert comparison.untested_reason is None


# The two-proportion z-test


def test_z_test_matches_statsmodels_proportions_ztest() -> None:
    control, treatment = BinomialSummary(units=1000, successes=200), BinomialSummary(units=980, successes=241)

    comparison = compare_proportions(control, treatment)
    statistic, p_value = proportions_ztest([241, 200], [980, 1000])

    assert comparison.test is SignificanceTest.TWO_PROPORTION_Z
    assert comparison.statistic == close(statistic)
    assert comparison.p_value == close(p_value)


def test_z_test_one_sided_matches_statsmodels() -> None:
    control, treatment = BinomialSummary(units=700, successes=90), BinomialSummary(units=720, successes=75)
    comparison = compare_proportions(control, treatment)

    _, larger = proportions_ztest([75, 90], [720, 700], alternative="larger")
    _, smaller = proportions_ztest([75, 90], [720, 700], alternative="smaller")

    assert comparison.one_sided_p_value(Alternative.GREATER) == close(larger)
    assert comparison.one_sided_p_value(Alternative.LESS) == close(smaller)


def test_proportion_interval_matches_statsmodels_normal() -> None:
    for successes, units in [(200, 1000), (3, 40), (0, 50), (50, 50)]:
        estimate = estimate_proportion(BinomialSummary(units=units, successes=successes), confidence=0.95)
        low, high = proportion_confint(successes, units, alpha=0.05, method="normal")

        assert estimate.ci_low == close(low)
        assert estimate.ci_high == close(high)


def test_proportion_interval_is_clipped_to_unit_range() -> None:
    estimate = estimate_proportion(BinomialSummary(units=40, successes=1))

    assert estimate.ci_low == 0.0
    assert estimate.ci_high < 1.0


def test_proportion_lift_interval_is_unpooled_wald() -> None:
    control, treatment = BinomialSummary(units=480, successes=100), BinomialSummary(units=500, successes=130)

    comparison = compare_proportions(control, treatment)
    low, high = confint_proportions_2indep(130, 500, 100, 480, method="wald", compare="diff")

    assert comparison.absolute_lift.ci_low == close(low)
    assert comparison.absolute_lift.ci_high == close(high)


def test_zero_conversions_in_both_arms_is_untested() -> None:
    comparison = compare_proportions(BinomialSummary(units=300, successes=0), BinomialSummary(units=310, successes=0))

    assert comparison.p_value is None
    assert comparison.statistic is None
    assert "same outcome" in comparison.untested_reason
    assert comparison.relative_lift is None
    assert comparison.absolute_lift.value == 0.0
    assert (comparison.absolute_lift.ci_low, comparison.absolute_lift.ci_high) == (0.0, 0.0)


def test_zero_control_rate_has_no_relative_lift() -> None:
    comparison = compare_proportions(BinomialSummary(units=300, successes=0), BinomialSummary(units=300, successes=9))
    _, p_value = proportions_ztest([9, 0], [300, 300])

    assert comparison.relative_lift is None
    assert comparison.p_value == close(p_value)


def test_arm_without_units_is_insufficient() -> None:
    with pytest.raises(InsufficientDataError, match="0 units"):
        compare_proportions(BinomialSummary(units=0, successes=0), BinomialSummary(units=10, successes=2))


def test_relative_lift_uses_growthbook_delta_method() -> None:
    # 20% to 25% on 1,000 units each: Var = se_T²/c² + t²·se_C²/c⁴ with
    # se² = p(1 - p)/n, so 0.0001875/0.04 + 0.0625·0.00016/0.0016 = 0.0109375.
    control, treatment = BinomialSummary(units=1000, successes=200), BinomialSummary(units=1000, successes=250)

    comparison = compare_proportions(control, treatment)
    z = stats.norm.isf(0.025)

    assert comparison.relative_lift.value == close(0.25)
    assert comparison.relative_lift.standard_error == close(np.sqrt(0.0109375))
    assert comparison.relative_lift.ci_low == close(0.25 - z * np.sqrt(0.0109375))


# The delta method for ratios


def test_ratio_variance_matches_hand_computation() -> None:
    # Numerators 1, 2, 3 and denominators 1, 1, 2: R = 2 / (4/3) = 1.5, and
    # x - R·y = (-0.5, 0.5, 0) has sample variance 0.25, so
    # Var(R) = 0.25 / (3 · (4/3)²) = 3/64.
    summary = RatioSummary.from_values(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 2.0]))

    estimate = estimate_ratio(summary)

    assert summary.covariance == close(0.5)
    assert estimate.value == close(1.5)
    assert estimate.standard_error**2 == close(3 / 64)


def test_ratio_with_unit_denominators_is_the_mean() -> None:
    values = latencies(9, 200)
    z = stats.norm.isf(0.025)

    estimate = estimate_ratio(RatioSummary.from_values(values, np.ones_like(values)))
    standard_error = values.std(ddof=1) / np.sqrt(len(values))

    assert estimate.value == close(values.mean())
    assert estimate.standard_error == close(standard_error)
    assert estimate.ci_high == close(values.mean() + z * standard_error)


def test_ratio_variance_matches_simulation() -> None:
    # Large-sample check of the delta method itself: 4,000 simulated arms of
    # 400 units, each unit with 1 + Poisson(2) requests whose latencies sum to
    # a Gamma(2 per request, 150 ms) total. The spread of the 4,000 ratios is
    # the true variance, and the delta-method variance of each arm should
    # match it. The sample variance of 4,000 draws has a relative standard error of
    # √(2/3999) ≈ 2.2%, so 8% is over 3.5 standard errors.
    rng = np.random.default_rng(10)
    requests = 1 + rng.poisson(2.0, size=(4000, 400))
    totals = rng.gamma(shape=2.0 * requests, scale=150.0)
    ratios = totals.sum(axis=1) / requests.sum(axis=1)

    delta_variances = [
        estimate_ratio(RatioSummary.from_values(totals[arm], requests[arm])).standard_error ** 2
        for arm in range(0, 4000, 40)
    ]

    assert np.mean(delta_variances) == pytest.approx(ratios.var(ddof=1), rel=0.08)


def test_ratio_comparison_z_test() -> None:
    control = RatioSummary.from_values(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 2.0]))
    treatment = RatioSummary.from_values(np.array([2.0, 2.0, 5.0, 1.0]), np.array([1.0, 2.0, 2.0, 1.0]))

    comparison = compare_ratios(control, treatment)
    control_estimate, treatment_estimate = estimate_ratio(control), estimate_ratio(treatment)
    standard_error = np.hypot(control_estimate.standard_error, treatment_estimate.standard_error)
    statistic = (treatment_estimate.value - control_estimate.value) / standard_error

    assert comparison.test is SignificanceTest.DELTA_METHOD_Z
    assert comparison.statistic == close(statistic)
    assert comparison.p_value == close(2 * stats.norm.sf(abs(statistic)))
    assert comparison.degrees_of_freedom is None


def test_ratio_zero_denominator_mean_is_insufficient() -> None:
    summary = RatioSummary.from_values(np.array([0.0, 0.0, 0.0]), np.array([0.0, 0.0, 0.0]))

    with pytest.raises(InsufficientDataError, match="mean denominator is 0"):
        estimate_ratio(summary)


def test_ratio_proportional_units_are_untested() -> None:
    denominators = np.array([1.0, 2.0, 4.0])
    control = RatioSummary.from_values(3 * denominators, denominators)
    treatment = RatioSummary.from_values(5 * denominators, denominators)

    comparison = compare_ratios(control, treatment)

    assert comparison.p_value is None
    assert "delta-method variances are zero" in comparison.untested_reason
    assert comparison.absolute_lift.value == close(2.0)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 95.0, -0.5])
def test_confidence_outside_unit_interval_is_rejected(confidence: float) -> None:
    with pytest.raises(ValueError, match="confidence"):
        compare_proportions(BinomialSummary(10, 2), BinomialSummary(10, 3), confidence=confidence)

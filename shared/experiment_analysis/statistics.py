"""Estimates per arm and comparisons of a treatment arm with control, for each metric type.

- Binomial metrics: the two-proportion z-test.
- Mean metrics: Welch's t-test, which does not assume equal variances.
- Ratio metrics: a z-test on the difference of the two arms' ratios, each
  with its variance from the delta method (Deng, Knoblich and Lu, "Applying
  the Delta Method in Metric Analytics: A Practical Guide with Novel Ideas",
  KDD 2018). The units are users while the metric counts requests, so a
  unit's numerator and denominator are correlated and the variance needs
  their covariance.

Every interval is two-sided at `confidence` and every p-value is two-sided.
The relative lift (treatment - control) / control gets its standard error
from the delta method, as GrowthBook's engine does
(https://docs.growthbook.io/statistics/details): Var ≈ se_T²/c² + t²·se_C²/c⁴
for control estimate c and treatment estimate t.

NOTE: the p-value tests the absolute difference, so at the edge of
significance the relative lift's interval can include 0 while p < alpha, or
the reverse. Report the verdict from the p-value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from scipy import stats

from shared.experiment_analysis.errors import InsufficientDataError
from shared.experiment_analysis.summaries import BinomialSummary, MeanSummary, RatioSummary

# The customary 95% level, which is also GrowthBook's (alpha 0.05).
DEFAULT_CONFIDENCE = 0.95

# The delta-method variance subtracts terms of similar size, so a remainder
# within this fraction of their magnitudes is rounding and counts as zero.
_CANCELLATION_TOLERANCE = 1e-9


class SignificanceTest(StrEnum):
    """The test behind a comparison's statistic and p-value."""

    TWO_PROPORTION_Z = "two_proportion_z"
    WELCH_T = "welch_t"
    DELTA_METHOD_Z = "delta_method_z"


class Alternative(StrEnum):
    """The direction of a one-sided test, named as scipy.stats names it: treatment greater or less than control."""

    GREATER = "greater"
    LESS = "less"


@dataclass(frozen=True, slots=True)
class Estimate:
    """A point estimate, its standard error, and its two-sided confidence interval [ci_low, ci_high]."""

    value: float
    standard_error: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True, slots=True)
class Comparison:
    """A treatment arm against control on one metric.

    `absolute_lift` is treatment - control and `relative_lift` is
    (treatment - control) / control, None when the control estimate is 0.
    `statistic` is z or t, with `degrees_of_freedom` for Welch's t-test (None
    for the z-tests). `statistic` and `p_value` are None only when the test is
    undefined, and `untested_reason` then gives the cause.
    """

    test: SignificanceTest
    confidence: float
    control: Estimate
    treatment: Estimate
    absolute_lift: Estimate
    relative_lift: Estimate | None
    statistic: float | None
    p_value: float | None
    degrees_of_freedom: float | None
    untested_reason: str | None

    def one_sided_p_value(self, alternative: Alternative) -> float | None:
        """Return the p-value of the one-sided test that treatment is `alternative` than control, None when untested.

        A guardrail uses it: the alternative is the harmful direction, and the
        test runs at alpha without a multiple-comparison correction.
        """
        if self.statistic is None:
            return None
        if self.test is SignificanceTest.WELCH_T:
            distribution = stats.t(self.degrees_of_freedom)
        else:
            distribution = stats.norm()
        if alternative is Alternative.GREATER:
            return float(distribution.sf(self.statistic))
        return float(distribution.cdf(self.statistic))


def estimate_proportion(summary: BinomialSummary, *, confidence: float = DEFAULT_CONFIDENCE) -> Estimate:
    """Estimate an arm's rate with the normal-approximation (Wald) interval, clipped to [0, 1].

    Raises InsufficientDataError when the arm has no units.
    NOTE: the Wald interval under-covers for small arms and rates near 0 or
    1 (at 0 successes it is [0, 0]), so read such arms with care.
    """
    if summary.units == 0:
        raise InsufficientDataError("the arm has 0 units, so its rate is undefined")
    rate = summary.successes / summary.units
    standard_error = math.sqrt(rate * (1 - rate) / summary.units)
    interval = _interval(rate, standard_error, _normal_critical_value(confidence))
    return Estimate(rate, standard_error, max(0.0, interval.ci_low), min(1.0, interval.ci_high))


def estimate_mean(summary: MeanSummary, *, confidence: float = DEFAULT_CONFIDENCE) -> Estimate:
    """Estimate an arm's mean with the t interval on units - 1 degrees of freedom."""
    standard_error = math.sqrt(summary.variance / summary.units)
    critical_value = _t_critical_value(confidence, summary.units - 1)
    return _interval(summary.mean, standard_error, critical_value)


def estimate_ratio(summary: RatioSummary, *, confidence: float = DEFAULT_CONFIDENCE) -> Estimate:
    """Estimate an arm's mean numerator / mean denominator with its delta-method normal interval.

    Var(R) ≈ (σ²_x - 2R·σ_xy + R²·σ²_y) / (n·μ_y²), which is Var(x - R·y) / (n·μ_y²).
    Raises InsufficientDataError when the mean denominator is 0.
    """
    if summary.denominator_mean == 0:
        raise InsufficientDataError("the arm's mean denominator is 0, so its ratio is undefined")
    ratio = summary.numerator_mean / summary.denominator_mean
    terms = (summary.numerator_variance, -2 * ratio * summary.covariance, ratio**2 * summary.denominator_variance)
    linearized_variance = sum(terms)

    # When every numerator is the same multiple of its denominator the terms
    # cancel, and what is left (of either sign) is rounding.
    if linearized_variance <= _CANCELLATION_TOLERANCE * sum(abs(term) for term in terms):
        linearized_variance = 0.0
    variance = linearized_variance / (summary.units * summary.denominator_mean**2)
    return _interval(ratio, math.sqrt(variance), _normal_critical_value(confidence))


def compare_proportions(
    control: BinomialSummary, treatment: BinomialSummary, *, confidence: float = DEFAULT_CONFIDENCE
) -> Comparison:
    """Compare two arms' rates with the two-proportion z-test.

    The test's standard error pools both arms' rates. Under the null
    hypothesis the rates are equal, so their common rate is best estimated
    from all units, and the z statistic then has the size it claims. (z² is
    the chi-square statistic of the 2x2 table without continuity correction.)
    The interval of the difference assumes no null hypothesis, so it uses
    each arm's own rate (unpooled). The comparison is untested when every
    unit of both arms has the same outcome, since the pooled standard error
    is then zero.
    Raises InsufficientDataError when an arm has no units.
    """
    control_estimate = estimate_proportion(control, confidence=confidence)
    treatment_estimate = estimate_proportion(treatment, confidence=confidence)

    pooled_rate = (control.successes + treatment.successes) / (control.units + treatment.units)
    pooled_standard_error = math.sqrt(pooled_rate * (1 - pooled_rate) * (1 / control.units + 1 / treatment.units))
    difference = treatment_estimate.value - control_estimate.value
    result = _z_test(difference, pooled_standard_error, "every unit of both arms has the same outcome")

    critical_value = _normal_critical_value(confidence)
    return _comparison(
        SignificanceTest.TWO_PROPORTION_Z, confidence, control_estimate, treatment_estimate, critical_value, result
    )


def compare_means(
    control: MeanSummary, treatment: MeanSummary, *, confidence: float = DEFAULT_CONFIDENCE
) -> Comparison:
    """Compare two arms' means with Welch's t-test.

    The degrees of freedom come from the Welch–Satterthwaite equation and
    serve the p-value and both lift intervals. When both arms have zero
    variance the statistic is undefined: the comparison is untested and the
    lift intervals shrink to their point estimates.
    """
    control_estimate = estimate_mean(control, confidence=confidence)
    treatment_estimate = estimate_mean(treatment, confidence=confidence)
    standard_error = math.hypot(control_estimate.standard_error, treatment_estimate.standard_error)

    if standard_error == 0:
        # Every half-width is 0 whatever the critical value, and no degrees of freedom exist.
        result = _untested("both arms have zero variance")
        return _comparison(SignificanceTest.WELCH_T, confidence, control_estimate, treatment_estimate, 0.0, result)

    degrees_of_freedom = _welch_degrees_of_freedom(control, treatment)
    statistic = (treatment_estimate.value - control_estimate.value) / standard_error
    p_value = float(2 * stats.t.sf(abs(statistic), degrees_of_freedom))
    result = _TestResult(statistic, p_value, degrees_of_freedom, None)

    critical_value = _t_critical_value(confidence, degrees_of_freedom)
    return _comparison(
        SignificanceTest.WELCH_T, confidence, control_estimate, treatment_estimate, critical_value, result
    )


def compare_ratios(
    control: RatioSummary, treatment: RatioSummary, *, confidence: float = DEFAULT_CONFIDENCE
) -> Comparison:
    """Compare two arms' ratios with a z-test on their difference, each ratio's variance from the delta method.

    The arms are independent, so the variance of the difference is the sum
    of the two. The comparison is untested when both variances are zero,
    which happens when every unit's numerator is the same multiple of its
    denominator.
    Raises InsufficientDataError when an arm's mean denominator is 0.
    """
    control_estimate = estimate_ratio(control, confidence=confidence)
    treatment_estimate = estimate_ratio(treatment, confidence=confidence)

    standard_error = math.hypot(control_estimate.standard_error, treatment_estimate.standard_error)
    difference = treatment_estimate.value - control_estimate.value
    result = _z_test(difference, standard_error, "both arms' delta-method variances are zero")

    critical_value = _normal_critical_value(confidence)
    return _comparison(
        SignificanceTest.DELTA_METHOD_Z, confidence, control_estimate, treatment_estimate, critical_value, result
    )


@dataclass(frozen=True, slots=True)
class _TestResult:
    statistic: float | None
    p_value: float | None
    degrees_of_freedom: float | None
    untested_reason: str | None


def _untested(cause: str) -> _TestResult:
    return _TestResult(None, None, None, f"the standard error of the difference is zero: {cause}")


def _z_test(difference: float, standard_error: float, zero_error_cause: str) -> _TestResult:
    if standard_error == 0:
        return _untested(zero_error_cause)
    statistic = difference / standard_error
    return _TestResult(statistic, float(2 * stats.norm.sf(abs(statistic))), None, None)


def _comparison(
    test: SignificanceTest,
    confidence: float,
    control: Estimate,
    treatment: Estimate,
    critical_value: float,
    result: _TestResult,
) -> Comparison:
    return Comparison(
        test=test,
        confidence=confidence,
        control=control,
        treatment=treatment,
        absolute_lift=_difference(control, treatment, critical_value),
        relative_lift=_relative_lift(control, treatment, critical_value),
        statistic=result.statistic,
        p_value=result.p_value,
        degrees_of_freedom=result.degrees_of_freedom,
        untested_reason=result.untested_reason,
    )


def _normal_critical_value(confidence: float) -> float:
    _check_confidence(confidence)
    return float(stats.norm.isf((1 - confidence) / 2))


def _t_critical_value(confidence: float, degrees_of_freedom: float) -> float:
    _check_confidence(confidence)
    return float(stats.t.isf((1 - confidence) / 2, degrees_of_freedom))


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence is {confidence!r}, but it must be between 0 and 1 (0.95 for 95% intervals)")


def _interval(value: float, standard_error: float, critical_value: float) -> Estimate:
    half_width = critical_value * standard_error
    return Estimate(value, standard_error, value - half_width, value + half_width)


def _difference(control: Estimate, treatment: Estimate, critical_value: float) -> Estimate:
    standard_error = math.hypot(control.standard_error, treatment.standard_error)
    return _interval(treatment.value - control.value, standard_error, critical_value)


def _relative_lift(control: Estimate, treatment: Estimate, critical_value: float) -> Estimate | None:
    if control.value == 0:
        return None
    variance = (
        treatment.standard_error**2 / control.value**2
        + treatment.value**2 * control.standard_error**2 / control.value**4
    )
    return _interval(treatment.value / control.value - 1, math.sqrt(variance), critical_value)


def _welch_degrees_of_freedom(control: MeanSummary, treatment: MeanSummary) -> float:
    control_term = control.variance / control.units
    treatment_term = treatment.variance / treatment.units
    return (control_term + treatment_term) ** 2 / (
        control_term**2 / (control.units - 1) + treatment_term**2 / (treatment.units - 1)
    )

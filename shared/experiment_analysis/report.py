"""The experiment report: per arm, its units and exposures, each metric with its interval, lift and p-value, and a verdict.

The first variant of the experiment in the experiments file is the
control, as in GrowthBook. Every other arm is compared with it on every
metric of the metrics file. The multiple-comparison policy is
`shared.experiment_analysis.multiple_testing`'s: Holm over the success
metrics of the report, guardrails one-sided at alpha without correction.
A sample ratio mismatch withholds the verdict, because the comparisons are
then biased however significant they look.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from growthbook.core import getEqualWeights
from pydantic import BaseModel

from shared.experiment_analysis.arm_data import ArmData, MetricSums
from shared.experiment_analysis.errors import InsufficientDataError
from shared.experiment_analysis.metrics_config import MetricConfig, MetricType
from shared.experiment_analysis.multiple_testing import holm_adjust
from shared.experiment_analysis.srm import SRM_P_VALUE_THRESHOLD, check_sample_ratio
from shared.experiment_analysis.statistics import (
    DEFAULT_CONFIDENCE,
    Alternative,
    Comparison,
    Estimate,
    compare_means,
    compare_proportions,
    compare_ratios,
    estimate_mean,
    estimate_proportion,
    estimate_ratio,
)
from shared.experiment_analysis.summaries import BinomialSummary, MeanSummary, RatioSummary
from shared.experiments import ExperimentConfig

MULTIPLE_COMPARISON_POLICY = (
    "Holm-Bonferroni over every (success metric, treatment arm) pair of the report, so the chance of any false "
    "winner is at most alpha; guardrails are tested one-sided in the harmful direction at alpha, uncorrected"
)

Outcome = Literal["control", "better", "worse", "inconclusive", "untested"]


class Interval(BaseModel):
    """A value and its two-sided confidence interval."""

    value: float
    ci_low: float
    ci_high: float


class ArmMetric(BaseModel):
    """One arm's result on one metric. The lifts and p-values compare it with control, so they are None for control.

    `adjusted_p_value` is Holm's for a success metric and None for a
    guardrail, whose `p_value` is one-sided in the harmful direction.
    `outcome` reads the test at alpha: better or worse in the metric's
    direction, inconclusive, or untested (`note` gives the reason).
    """

    variant: str
    units: int
    estimate: Interval | None = None
    absolute_lift: Interval | None = None
    relative_lift: Interval | None = None
    test: str | None = None
    p_value: float | None = None
    adjusted_p_value: float | None = None
    outcome: Outcome
    note: str | None = None


class MetricResult(BaseModel):
    """One metric's results, one per arm in arm order."""

    key: str
    type: MetricType
    guardrail: bool
    higher_is_better: bool
    arms: list[ArmMetric]


class ArmUnits(BaseModel):
    """One arm's configured weight (None for an arm no longer in the experiment), units, exposures and mixed units."""

    variant: str
    weight: float | None
    units: int
    mixed_units: int
    exposure_units: int
    exposures: int


class SampleRatio(BaseModel):
    """The sample ratio mismatch check over the configured arms' exposed units."""

    observed_units: list[int]
    expected_units: list[float]
    statistic: float
    p_value: float
    threshold_p_value: float
    mismatch: bool


class ExperimentReport(BaseModel):
    """The analysis of one experiment for one tenant over [since, until)."""

    experiment: str
    tenant: str
    since: datetime | None
    until: datetime | None
    control: str
    confidence: float
    arms: list[ArmUnits]
    sample_ratio: SampleRatio | None
    metrics: list[MetricResult]
    guardrail_alerts: list[str]
    verdict: str
    multiple_comparisons: str


def build_report(
    experiment: ExperimentConfig,
    arms: list[ArmData],
    metrics: list[MetricConfig],
    *,
    tenant: str,
    since: datetime | None = None,
    until: datetime | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
) -> ExperimentReport:
    """Return the report of `experiment` from its arms' data, with the control first."""
    ordered = _ordered_arms(experiment, arms)
    control = experiment.variants[0].key
    alpha = 1 - confidence
    results = [_metric_result(metric, ordered, confidence) for metric in metrics]
    _adjust_success_p_values(results, alpha)
    sample_ratio = _sample_ratio(experiment, ordered)
    alerts = _guardrail_alerts(results)
    return ExperimentReport(
        experiment=experiment.key,
        tenant=tenant,
        since=since,
        until=until,
        control=control,
        confidence=confidence,
        arms=[_arm_units(arm, experiment) for arm in ordered],
        sample_ratio=sample_ratio,
        metrics=results,
        guardrail_alerts=alerts,
        verdict=_verdict(sample_ratio, results, alerts, ordered),
        multiple_comparisons=MULTIPLE_COMPARISON_POLICY,
    )


def _ordered_arms(experiment: ExperimentConfig, arms: list[ArmData]) -> list[ArmData]:
    """Return one entry per configured variant in file order (empty when it has no data), then any other arm found."""
    by_variant = {arm.variant: arm for arm in arms}
    ordered = [by_variant.pop(variant.key, ArmData(variant.key, 0, 0, 0, 0)) for variant in experiment.variants]
    return ordered + sorted(by_variant.values(), key=lambda arm: arm.variant)


def _arm_units(arm: ArmData, experiment: ExperimentConfig) -> ArmUnits:
    weights = dict(zip([variant.key for variant in experiment.variants], _weights(experiment), strict=True))
    return ArmUnits(
        variant=arm.variant,
        weight=weights.get(arm.variant),
        units=arm.units,
        mixed_units=arm.mixed_units,
        exposure_units=arm.exposure_units,
        exposures=arm.exposures,
    )


def _weights(experiment: ExperimentConfig) -> list[float]:
    """Return the variants' weights, or equal weights when the file gives none, as assignment buckets them."""
    weights = [variant.weight for variant in experiment.variants]
    if any(weight is None for weight in weights):
        return getEqualWeights(len(weights))
    return [float(weight) for weight in weights if weight is not None]


def _sample_ratio(experiment: ExperimentConfig, arms: list[ArmData]) -> SampleRatio | None:
    """Check the exposed units of the configured arms against their weights; None with fewer than 2 arms or no units."""
    configured = arms[: len(experiment.variants)]
    if len(configured) < 2:
        return None
    try:
        check = check_sample_ratio([arm.exposure_units for arm in configured], _weights(experiment))
    except InsufficientDataError:
        return None
    return SampleRatio(
        observed_units=list(check.observed_units),
        expected_units=list(check.expected_units),
        statistic=check.statistic,
        p_value=check.p_value,
        threshold_p_value=SRM_P_VALUE_THRESHOLD,
        mismatch=check.mismatch,
    )


def _metric_result(metric: MetricConfig, arms: list[ArmData], confidence: float) -> MetricResult:
    control = arms[0]
    results = [_control_result(metric, control, confidence)]
    results += [_treatment_result(metric, control, arm, confidence) for arm in arms[1:]]
    return MetricResult(
        key=metric.key,
        type=metric.type,
        guardrail=metric.guardrail,
        higher_is_better=metric.higher_is_better,
        arms=results,
    )


def _sums(arm: ArmData, metric: MetricConfig) -> MetricSums:
    return arm.metrics.get(metric.key, MetricSums(0, 0.0, 0.0, 0.0, 0.0, 0.0))


def _summary(sums: MetricSums, metric_type: MetricType) -> BinomialSummary | MeanSummary | RatioSummary:
    if metric_type is MetricType.BINOMIAL:
        return BinomialSummary(units=sums.units, successes=round(sums.sum_x))
    if metric_type is MetricType.MEAN:
        return MeanSummary.from_sums(sums.units, sums.sum_x, sums.sum_xx)
    return RatioSummary.from_sums(sums.units, sums.sum_x, sums.sum_xx, sums.sum_y, sums.sum_yy, sums.sum_xy)


def _estimate(summary: BinomialSummary | MeanSummary | RatioSummary, confidence: float) -> Estimate:
    if isinstance(summary, BinomialSummary):
        return estimate_proportion(summary, confidence=confidence)
    if isinstance(summary, MeanSummary):
        return estimate_mean(summary, confidence=confidence)
    return estimate_ratio(summary, confidence=confidence)


def _compare(
    control: BinomialSummary | MeanSummary | RatioSummary,
    treatment: BinomialSummary | MeanSummary | RatioSummary,
    confidence: float,
) -> Comparison:
    if isinstance(control, BinomialSummary) and isinstance(treatment, BinomialSummary):
        return compare_proportions(control, treatment, confidence=confidence)
    if isinstance(control, MeanSummary) and isinstance(treatment, MeanSummary):
        return compare_means(control, treatment, confidence=confidence)
    assert isinstance(control, RatioSummary) and isinstance(treatment, RatioSummary)
    return compare_ratios(control, treatment, confidence=confidence)


def _interval(estimate: Estimate | None) -> Interval | None:
    if estimate is None:
        return None
    return Interval(value=estimate.value, ci_low=estimate.ci_low, ci_high=estimate.ci_high)


def _control_result(metric: MetricConfig, arm: ArmData, confidence: float) -> ArmMetric:
    sums = _sums(arm, metric)
    try:
        estimate = _estimate(_summary(sums, metric.type), confidence)
    except InsufficientDataError as error:
        return ArmMetric(variant=arm.variant, units=sums.units, outcome="control", note=str(error))
    return ArmMetric(variant=arm.variant, units=sums.units, estimate=_interval(estimate), outcome="control")


def _treatment_result(metric: MetricConfig, control: ArmData, arm: ArmData, confidence: float) -> ArmMetric:
    sums = _sums(arm, metric)
    try:
        comparison = _compare(_summary(_sums(control, metric), metric.type), _summary(sums, metric.type), confidence)
    except InsufficientDataError as error:
        return ArmMetric(variant=arm.variant, units=sums.units, outcome="untested", note=str(error))
    p_value = comparison.p_value
    if metric.guardrail:
        p_value = comparison.one_sided_p_value(_harmful_direction(metric))
    return ArmMetric(
        variant=arm.variant,
        units=sums.units,
        estimate=_interval(comparison.treatment),
        absolute_lift=_interval(comparison.absolute_lift),
        relative_lift=_interval(comparison.relative_lift),
        test=comparison.test.value,
        p_value=p_value,
        outcome="untested" if p_value is None else "inconclusive",
        note=comparison.untested_reason,
    )


def _harmful_direction(metric: MetricConfig) -> Alternative:
    return Alternative.LESS if metric.higher_is_better else Alternative.GREATER


def _adjust_success_p_values(results: list[MetricResult], alpha: float) -> None:
    """Set each tested result's adjusted p-value (Holm for success metrics, none for guardrails) and its outcome."""
    tested = [(metric, arm) for metric in results for arm in metric.arms[1:] if arm.p_value is not None]
    family = [(metric, arm) for metric, arm in tested if not metric.guardrail]
    for (_metric, arm), adjusted in zip(family, holm_adjust([arm.p_value for _m, arm in family]), strict=True):
        arm.adjusted_p_value = adjusted
    for metric, arm in tested:
        deciding = arm.p_value if metric.guardrail else arm.adjusted_p_value
        assert deciding is not None and arm.absolute_lift is not None
        if deciding < alpha:
            arm.outcome = _direction(metric, arm.absolute_lift.value)


def _direction(metric: MetricResult, lift: float) -> Outcome:
    improved = lift > 0 if metric.higher_is_better else lift < 0
    return "better" if improved else "worse"


def _guardrail_alerts(results: list[MetricResult]) -> list[str]:
    return [
        f"{arm.variant} makes guardrail {metric.key} worse (one-sided p = {arm.p_value:.3g})"
        for metric in results
        if metric.guardrail
        for arm in metric.arms[1:]
        if arm.outcome == "worse"
    ]


def _verdict(sample_ratio: SampleRatio | None, results: list[MetricResult], alerts: list[str], arms: list[ArmData]) -> str:
    if sample_ratio is not None and sample_ratio.mismatch:
        return (
            f"no verdict: sample ratio mismatch (p = {sample_ratio.p_value:.2g} < {SRM_P_VALUE_THRESHOLD}). "
            "Check assignment and exposure logging before reading any metric"
        )
    if len(arms) < 2 or arms[0].units == 0:
        return "no verdict: the control arm has no units yet"
    lines = [_arm_verdict(arm.variant, results) for arm in arms[1:]]
    if alerts:
        lines.append("guardrail alerts: " + "; ".join(alerts))
    return ". ".join(lines)


def _arm_verdict(variant: str, results: list[MetricResult]) -> str:
    outcomes: dict[str, list[str]] = {"better": [], "worse": []}
    for metric in results:
        if metric.guardrail:
            continue
        for arm in metric.arms[1:]:
            if arm.variant == variant and arm.outcome in outcomes:
                outcomes[arm.outcome].append(metric.key)
    if not outcomes["better"] and not outcomes["worse"]:
        return f"{variant}: no significant difference on any success metric"
    parts = []
    if outcomes["better"]:
        parts.append("better on " + ", ".join(outcomes["better"]))
    if outcomes["worse"]:
        parts.append("worse on " + ", ".join(outcomes["worse"]))
    return f"{variant}: " + "; ".join(parts)

"""The experiment report built from arm sums of simulated units: outcomes, Holm adjustment, guardrails and the SRM stop."""

from __future__ import annotations

import numpy as np
import pytest

from shared.experiment_analysis.arm_data import ArmData, MetricSums
from shared.experiment_analysis.metrics_config import MetricConfig, MetricType, RequestValue
from shared.experiment_analysis.report import build_report
from shared.experiments import ExperimentConfig

CONVERSION = MetricConfig(key="conversion_rate", type=MetricType.BINOMIAL, feedback="conversion")
REVENUE = MetricConfig(key="revenue_per_unit", type=MetricType.MEAN, feedback="value")
LATENCY = MetricConfig(key="latency_ms", type=MetricType.RATIO, request_value=RequestValue.LATENCY_MS, higher_is_better=False)
ERRORS = MetricConfig(
    key="error_rate", type=MetricType.RATIO, request_value=RequestValue.FAILED, higher_is_better=False, guardrail=True
)
METRICS = [CONVERSION, REVENUE, LATENCY, ERRORS]


def _experiment(weights: tuple[float, float] = (0.5, 0.5)) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "key": "exp",
            "variants": [
                {"key": "control", "weight": weights[0], "backend": "embedded"},
                {"key": "treatment", "weight": weights[1], "backend": "embedded"},
            ],
        }
    )


def _sums(x: np.ndarray, y: np.ndarray) -> MetricSums:
    return MetricSums(len(x), float(x.sum()), float((x * x).sum()), float(y.sum()), float((y * y).sum()), float((x * y).sum()))


def _arm(
    rng: np.random.Generator, variant: str, units: int, conversion: float, latency_ms: float, error_rate: float
) -> ArmData:
    """Simulate `units` users: 1-5 requests each, lognormal latency per request, a conversion per user, revenue on conversion."""
    requests = rng.integers(1, 6, size=units).astype(float)
    converted = (rng.random(units) < conversion).astype(float)
    revenue = converted * rng.gamma(2.0, 10.0, size=units)
    latency_sums = np.array([rng.lognormal(np.log(latency_ms), 0.3, size=int(n)).sum() for n in requests])
    errors = rng.binomial(requests.astype(int), error_rate).astype(float)
    ones = np.ones(units)
    metrics = {
        CONVERSION.key: _sums(converted, ones),
        REVENUE.key: _sums(revenue, ones),
        LATENCY.key: _sums(latency_sums, requests),
        ERRORS.key: _sums(errors, requests),
    }
    return ArmData(variant, units, 0, units, int(requests.sum()), metrics)


def _metric(report, key: str):  # type: ignore[no-untyped-def]
    return next(metric for metric in report.metrics if metric.key == key)


def test_clear_winner_reads_better() -> None:
    rng = np.random.default_rng(1)
    arms = [_arm(rng, "control", 3000, 0.20, 400.0, 0.02), _arm(rng, "treatment", 3000, 0.26, 300.0, 0.02)]

    report = build_report(_experiment(), arms, METRICS, tenant="t")

    treatment = _metric(report, "conversion_rate").arms[1]
    assert treatment.outcome == "better"
    assert _metric(report, "latency_ms").arms[1].outcome == "better"
    assert "treatment: better on" in report.verdict
    assert report.sample_ratio is not None and not report.sample_ratio.mismatch


def test_control_listed_first_without_lift() -> None:
    rng = np.random.default_rng(2)
    arms = [_arm(rng, "treatment", 500, 0.2, 400.0, 0.02), _arm(rng, "control", 500, 0.2, 400.0, 0.02)]

    report = build_report(_experiment(), arms, METRICS, tenant="t")

    control = _metric(report, "conversion_rate").arms[0]
    assert report.control == "control"
    assert control.variant == "control"
    assert control.outcome == "control"
    assert control.absolute_lift is None


def test_holm_adjusted_at_least_raw() -> None:
    rng = np.random.default_rng(3)
    arms = [_arm(rng, "control", 800, 0.2, 400.0, 0.02), _arm(rng, "treatment", 800, 0.22, 390.0, 0.02)]

    report = build_report(_experiment(), arms, METRICS, tenant="t")

    success = [metric.arms[1] for metric in report.metrics if not metric.guardrail]
    assert all(arm.adjusted_p_value is not None and arm.adjusted_p_value >= arm.p_value for arm in success)
    assert min(arm.adjusted_p_value for arm in success) == pytest.approx(3 * min(arm.p_value for arm in success))


def test_guardrail_harm_flagged() -> None:
    rng = np.random.default_rng(4)
    arms = [_arm(rng, "control", 2000, 0.2, 400.0, 0.02), _arm(rng, "treatment", 2000, 0.2, 400.0, 0.05)]

    report = build_report(_experiment(), arms, METRICS, tenant="t")

    errors = _metric(report, "error_rate").arms[1]
    assert errors.outcome == "worse"
    assert errors.adjusted_p_value is None
    assert report.guardrail_alerts == [f"treatment makes guardrail error_rate worse (one-sided p = {errors.p_value:.3g})"]
    assert "guardrail alerts" in report.verdict


def test_guardrail_improvement_not_flagged() -> None:
    rng = np.random.default_rng(5)
    arms = [_arm(rng, "control", 2000, 0.2, 400.0, 0.05), _arm(rng, "treatment", 2000, 0.2, 400.0, 0.02)]

    report = build_report(_experiment(), arms, METRICS, tenant="t")

    assert _metric(report, "error_rate").arms[1].outcome == "inconclusive"
    assert report.guardrail_alerts == []


def test_sample_ratio_mismatch_withholds_verdict() -> None:
    rng = np.random.default_rng(6)
    arms = [_arm(rng, "control", 900, 0.2, 400.0, 0.02), _arm(rng, "treatment", 1100, 0.3, 400.0, 0.02)]

    report = build_report(_experiment(), arms, METRICS, tenant="t")

    assert report.sample_ratio is not None
    assert report.sample_ratio.mismatch
    assert report.verdict.startswith("no verdict: sample ratio mismatch")


def test_split_matching_weights_passes() -> None:
    rng = np.random.default_rng(7)
    arms = [_arm(rng, "control", 900, 0.2, 400.0, 0.02), _arm(rng, "treatment", 1100, 0.2, 400.0, 0.02)]

    report = build_report(_experiment((0.45, 0.55)), arms, METRICS, tenant="t")

    assert report.sample_ratio is not None
    assert not report.sample_ratio.mismatch


def test_arm_without_units_untested() -> None:
    rng = np.random.default_rng(8)
    arms = [_arm(rng, "control", 100, 0.2, 400.0, 0.02)]

    report = build_report(_experiment(), arms, METRICS, tenant="t")

    treatment = _metric(report, "revenue_per_unit").arms[1]
    assert treatment.units == 0
    assert treatment.outcome == "untested"
    assert treatment.note is not None
    assert report.sample_ratio is not None and report.sample_ratio.mismatch

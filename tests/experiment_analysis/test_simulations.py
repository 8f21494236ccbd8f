"""Seeded simulations with known truths: interval coverage, power at the planned size, A/A false positives, SRM.

Each claim is a rate over many seeds, so every band below is sized by the
binomial noise of that rate over the seed count, and a comment gives the
computation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from shared.experiment_analysis.power import units_per_arm_for_proportions
from shared.experiment_analysis.srm import check_sample_ratio
from shared.experiment_analysis.statistics import (
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

ALPHA = 0.05


@dataclass(frozen=True)
class ArmTruth:
    """An arm's true parameters: conversion rate, lognormal latency per unit, and latency per request."""

    conversion_rate: float
    latency_mu: float
    latency_sigma: float
    # A unit sends 1 + Poisson(2) requests, each with a Gamma(2, scale) latency.
    request_latency_scale_ms: float

    @property
    def mean_latency_ms(self) -> float:
        return math.exp(self.latency_mu + self.latency_sigma**2 / 2)

    @property
    def latency_per_request_ms(self) -> float:
        return 2 * self.request_latency_scale_ms


@dataclass(frozen=True)
class ArmData:
    conversions: BinomialSummary
    latency: MeanSummary
    latency_per_request: RatioSummary


CONTROL = ArmTruth(conversion_rate=0.20, latency_mu=6.0, latency_sigma=1.0, request_latency_scale_ms=150.0)
TREATMENTS = (
    ArmTruth(conversion_rate=0.22, latency_mu=6.1, latency_sigma=1.0, request_latency_scale_ms=160.0),
    ArmTruth(conversion_rate=0.25, latency_mu=5.9, latency_sigma=0.8, request_latency_scale_ms=140.0),
)
UNITS_PER_ARM = 1000

# Coverage: 400 seeds of 3 arms. A 95% interval's hit rate over 400 seeds has
# a standard deviation of √(0.95·0.05/400) ≈ 0.011, so [0.92, 0.98] is about
# ±2.75 standard deviations (and more for the per-arm rates, over 1,200
# intervals).
COVERAGE_SEEDS = 400
COVERAGE_BAND = (0.92, 0.98)

# A/A: 1,000 seeds. A false-positive rate of 0.05 over 1,000 seeds has a
# standard deviation of √(0.05·0.95/1000) ≈ 0.0069, so [0.03, 0.07] is about
# ±2.9 standard deviations.
AA_SEEDS = 1000
AA_BAND = (0.03, 0.07)


def simulate_arm(rng: np.random.Generator, truth: ArmTruth, units: int) -> ArmData:
    conversions = rng.random(units) < truth.conversion_rate
    latencies = rng.lognormal(truth.latency_mu, truth.latency_sigma, size=units)
    requests = 1 + rng.poisson(2.0, size=units)
    # The sum of k Gamma(2, scale) latencies is Gamma(2k, scale).
    total_latencies = rng.gamma(shape=2.0 * requests, scale=truth.request_latency_scale_ms)
    return ArmData(
        BinomialSummary.from_outcomes(conversions),
        MeanSummary.from_values(latencies),
        RatioSummary.from_values(total_latencies, requests),
    )


def covers(estimate: Estimate, truth: float) -> bool:
    return estimate.ci_low <= truth <= estimate.ci_high


def detected(comparison: Comparison) -> bool:
    return comparison.p_value is not None and comparison.p_value < ALPHA


@pytest.fixture(scope="module")
def coverage_runs() -> list[tuple[ArmData, ...]]:
    """Return the simulated arms (control first) of each coverage seed."""
    runs = []
    for seed in range(COVERAGE_SEEDS):
        rng = np.random.default_rng(seed)
        runs.append(tuple(simulate_arm(rng, truth, UNITS_PER_ARM) for truth in (CONTROL, *TREATMENTS)))
    return runs


def test_rate_intervals_cover_true_rates(coverage_runs: list[tuple[ArmData, ...]]) -> None:
    truths = (CONTROL, *TREATMENTS)
    hits = [
        covers(estimate_proportion(arm.conversions), truth.conversion_rate)
        for arms in coverage_runs
        for arm, truth in zip(arms, truths, strict=True)
    ]

    assert COVERAGE_BAND[0] <= np.mean(hits) <= COVERAGE_BAND[1]


def test_mean_intervals_cover_true_latency(coverage_runs: list[tuple[ArmData, ...]]) -> None:
    truths = (CONTROL, *TREATMENTS)
    hits = [
        covers(estimate_mean(arm.latency), truth.mean_latency_ms)
        for arms in coverage_runs
        for arm, truth in zip(arms, truths, strict=True)
    ]

    assert COVERAGE_BAND[0] <= np.mean(hits) <= COVERAGE_BAND[1]


def test_ratio_intervals_cover_truth(coverage_runs: list[tuple[ArmData, ...]]) -> None:
    truths = (CONTROL, *TREATMENTS)
    hits = [
        covers(estimate_ratio(arm.latency_per_request), truth.latency_per_request_ms)
        for arms in coverage_runs
        for arm, truth in zip(arms, truths, strict=True)
    ]

    assert COVERAGE_BAND[0] <= np.mean(hits) <= COVERAGE_BAND[1]


def test_lift_intervals_cover_true_lifts(coverage_runs: list[tuple[ArmData, ...]]) -> None:
    rate_hits, latency_hits, ratio_hits = [], [], []
    for control, *treatments in coverage_runs:
        for arm, truth in zip(treatments, TREATMENTS, strict=True):
            rates = compare_proportions(control.conversions, arm.conversions)
            latencies = compare_means(control.latency, arm.latency)
            ratios = compare_ratios(control.latency_per_request, arm.latency_per_request)
            rate_hits.append(covers(rates.absolute_lift, truth.conversion_rate - CONTROL.conversion_rate))
            latency_hits.append(covers(latencies.absolute_lift, truth.mean_latency_ms - CONTROL.mean_latency_ms))
            ratio_hits.append(
                covers(ratios.relative_lift, truth.latency_per_request_ms / CONTROL.latency_per_request_ms - 1)
            )

    assert COVERAGE_BAND[0] <= np.mean(rate_hits) <= COVERAGE_BAND[1]
    assert COVERAGE_BAND[0] <= np.mean(latency_hits) <= COVERAGE_BAND[1]
    assert COVERAGE_BAND[0] <= np.mean(ratio_hits) <= COVERAGE_BAND[1]


def test_planned_size_detects_lift() -> None:
    # 1,000 seeds at the planned 1,094 units per arm. The power is 0.80 by
    # design, and its estimate over 1,000 seeds has a standard deviation of
    # √(0.8·0.2/1000) ≈ 0.013, so [0.76, 0.84] is about ±3 standard deviations.
    units = units_per_arm_for_proportions(0.20, 0.25, alpha=ALPHA, power=0.8)
    rng = np.random.default_rng(2024)
    control_successes = rng.binomial(units, 0.20, size=1000)
    treatment_successes = rng.binomial(units, 0.25, size=1000)

    detections = [
        detected(compare_proportions(BinomialSummary(units, int(control)), BinomialSummary(units, int(treatment))))
        for control, treatment in zip(control_successes, treatment_successes, strict=True)
    ]

    assert units == 1094
    assert 0.76 <= np.mean(detections) <= 0.84


def test_aa_rate_false_positives() -> None:
    rng = np.random.default_rng(11)
    successes = rng.binomial(UNITS_PER_ARM, 0.2, size=(AA_SEEDS, 2))

    comparisons = [
        compare_proportions(BinomialSummary(UNITS_PER_ARM, int(a)), BinomialSummary(UNITS_PER_ARM, int(b)))
        for a, b in successes
    ]
    two_sided = np.mean([detected(comparison) for comparison in comparisons])
    one_sided = np.mean([comparison.one_sided_p_value(Alternative.GREATER) < ALPHA for comparison in comparisons])

    assert AA_BAND[0] <= two_sided <= AA_BAND[1]
    assert AA_BAND[0] <= one_sided <= AA_BAND[1]


def test_aa_mean_false_positives() -> None:
    rng = np.random.default_rng(12)
    latencies = rng.lognormal(6.0, 1.0, size=(AA_SEEDS, 2, UNITS_PER_ARM))

    false_positives = [
        detected(compare_means(MeanSummary.from_values(control), MeanSummary.from_values(treatment)))
        for control, treatment in latencies
    ]

    assert AA_BAND[0] <= np.mean(false_positives) <= AA_BAND[1]


def test_aa_ratio_false_positives() -> None:
    rng = np.random.default_rng(13)
    requests = 1 + rng.poisson(2.0, size=(AA_SEEDS, 2, UNITS_PER_ARM))
    totals = rng.gamma(shape=2.0 * requests, scale=150.0)

    false_positives = [
        detected(
            compare_ratios(
                RatioSummary.from_values(totals[seed, 0], requests[seed, 0]),
                RatioSummary.from_values(totals[seed, 1], requests[seed, 1]),
            )
        )
        for seed in range(AA_SEEDS)
    ]

    assert AA_BAND[0] <= np.mean(false_positives) <= AA_BAND[1]


def test_srm_fair_split_rarely_flags() -> None:
    # The flag's false-positive rate is 0.001 by design: about 1 of 1,000
    # seeds, and 5 or more happen with probability under 0.4% (Poisson(1)).
    rng = np.random.default_rng(14)
    first_arm = rng.binomial(2000, 0.5, size=1000)

    flags = [check_sample_ratio([int(units), 2000 - int(units)], [0.5, 0.5]).mismatch for units in first_arm]

    assert sum(flags) < 5


def test_srm_injected_split_usually_flags() -> None:
    # With 2,000 units split 45/55 the first arm has 900 ± 22 units, and the
    # flag (χ² > 10.83) needs fewer than 926, so it trips in about 88% of
    # seeds. Over 1,000 seeds that rate has a standard deviation of about 0.01.
    rng = np.random.default_rng(15)
    first_arm = rng.binomial(2000, 0.45, size=1000)

    flags = [check_sample_ratio([int(units), 2000 - int(units)], [0.5, 0.5]).mismatch for units in first_arm]

    assert 0.84 <= np.mean(flags) <= 0.92

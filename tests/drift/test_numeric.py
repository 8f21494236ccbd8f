"""The KS test and PSI on fixed-seed samples."""

from __future__ import annotations

import numpy as np
import pytest

from services.drift.numeric import KS_P_VALUE, PSI, ks_test, population_stability_index


def test_psi_same_distribution_below_moderate_band() -> None:
    rng = np.random.default_rng(1)
    values = [
        population_stability_index(rng.lognormal(5, 1, 1000), rng.lognormal(5, 1, 1000), bins=10, threshold=0.2).value
        for _ in range(20)
    ]

    # The no-shift PSI of 1,000 against 1,000 samples averages about 9 * (2 / 1000) = 0.018.
    assert max(values) < 0.1
    assert np.mean(values) == pytest.approx(0.018, abs=0.008)


def test_psi_same_distribution_does_not_fire() -> None:
    rng = np.random.default_rng(2)

    result = population_stability_index(rng.normal(size=2000), rng.normal(size=1000), bins=10, threshold=0.2)

    assert result.name == PSI
    assert result.threshold == 0.2
    assert not result.fired


def test_psi_shifted_distribution_fires() -> None:
    rng = np.random.default_rng(3)

    result = population_stability_index(rng.normal(size=2000), rng.normal(loc=1.0, size=1000), bins=10, threshold=0.2)

    assert result.value > 0.5
    assert result.fired


def test_psi_of_100_samples_is_noisy() -> None:
    rng = np.random.default_rng(4)
    values = [
        population_stability_index(rng.normal(size=100), rng.normal(size=100), bins=10, threshold=0.2).value
        for _ in range(200)
    ]

    # The figure that sets the minimum window size: about 0.18 with no shift at all.
    assert np.mean(values) == pytest.approx(0.18, abs=0.03)


def test_psi_tied_reference_values_stay_finite() -> None:
    rng = np.random.default_rng(5)
    # A score that is exactly 0 for 80% of requests makes most quantile edges coincide.
    reference = np.where(rng.random(2000) < 0.8, 0.0, rng.random(2000))
    current = np.where(rng.random(1000) < 0.8, 0.0, rng.random(1000))

    result = population_stability_index(reference, current, bins=10, threshold=0.2)

    assert np.isfinite(result.value)
    assert not result.fired


def test_psi_empty_current_bin_stays_finite() -> None:
    rng = np.random.default_rng(6)

    result = population_stability_index(rng.normal(size=2000), np.full(1000, 10.0), bins=10, threshold=0.2)

    assert np.isfinite(result.value)
    assert result.fired


def test_ks_same_distribution_does_not_fire() -> None:
    rng = np.random.default_rng(7)

    result = ks_test(rng.normal(size=2000), rng.normal(size=1000), alpha=0.05)

    assert result.name == KS_P_VALUE
    assert result.value > 0.05
    assert not result.fired


def test_ks_shifted_distribution_fires() -> None:
    rng = np.random.default_rng(8)

    result = ks_test(rng.normal(size=2000), rng.normal(loc=0.5, size=1000), alpha=0.001)

    assert result.value < 1e-6
    assert result.threshold == 0.001
    assert result.fired

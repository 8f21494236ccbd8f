"""The two-proportion sample size against a hand formula."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from shared.experiment_analysis.power import units_per_arm_for_proportions


def test_power_20_to_25_percent() -> None:
    # By hand, with the standard library's normal quantiles:
    # p̄ = 0.225, √(2·0.225·0.775) = 0.59055, √(0.16 + 0.1875) = 0.58949,
    # (1.95996·0.59055 + 0.84162·0.58949)² / 0.05² = 1093.7, so 1,094.
    z_alpha, z_power = NormalDist().inv_cdf(0.975), NormalDist().inv_cdf(0.8)
    by_hand = (z_alpha * math.sqrt(2 * 0.225 * 0.775) + z_power * math.sqrt(0.2 * 0.8 + 0.25 * 0.75)) ** 2 / 0.05**2

    units = units_per_arm_for_proportions(0.2, 0.25, alpha=0.05, power=0.8)

    assert by_hand == pytest.approx(1093.7, abs=0.05)
    assert units == math.ceil(by_hand) == 1094


def test_power_is_symmetric_in_direction() -> None:
    assert units_per_arm_for_proportions(0.25, 0.2) == units_per_arm_for_proportions(0.2, 0.25)


def test_power_grows_with_stricter_settings() -> None:
    base = units_per_arm_for_proportions(0.2, 0.25)

    assert units_per_arm_for_proportions(0.2, 0.25, alpha=0.01) > base
    assert units_per_arm_for_proportions(0.2, 0.25, power=0.9) > base


@pytest.mark.parametrize(
    ("baseline", "treatment", "alpha", "power", "message"),
    [
        (0.0, 0.25, 0.05, 0.8, "baseline_rate is 0.0"),
        (0.2, 1.0, 0.05, 0.8, "treatment_rate is 1.0"),
        (0.2, 0.2, 0.05, 0.8, "must be non-zero"),
        (0.2, 0.25, 0.0, 0.8, "alpha is 0.0"),
        (0.2, 0.25, 0.05, 1.0, "power is 1.0"),
    ],
)
def test_power_rejects_invalid_inputs(
    baseline: float, treatment: float, alpha: float, power: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        units_per_arm_for_proportions(baseline, treatment, alpha=alpha, power=power)

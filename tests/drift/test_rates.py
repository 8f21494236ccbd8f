"""The rate test on fixed-seed outcomes."""

from __future__ import annotations

import numpy as np
import pytest

from services.drift.rates import CHI2_P_VALUE, CURRENT_RATE, FISHER_EXACT_P_VALUE, REFERENCE_RATE, rate_test


def outcomes(rate: float, count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(count) < rate


def test_rate_test_same_rate_does_not_fire() -> None:
    p_value, reference_rate, current_rate = rate_test(outcomes(0.05, 2000, 1), outcomes(0.05, 1000, 2), alpha=0.05)

    assert p_value.name == CHI2_P_VALUE
    assert not p_value.fired
    assert reference_rate.name == REFERENCE_RATE
    assert current_rate.name == CURRENT_RATE


def test_rate_test_tripled_rate_fires() -> None:
    p_value, reference_rate, current_rate = rate_test(outcomes(0.05, 2000, 3), outcomes(0.15, 1000, 4), alpha=0.001)

    assert p_value.value < 1e-10
    assert p_value.fired
    assert reference_rate.value == pytest.approx(0.05, abs=0.01)
    assert current_rate.value == pytest.approx(0.15, abs=0.02)


def test_rate_test_context_rates_never_fire() -> None:
    _, reference_rate, current_rate = rate_test(outcomes(0.05, 2000, 5), outcomes(0.5, 1000, 6), alpha=0.05)

    assert reference_rate.threshold is None
    assert not reference_rate.fired
    assert not current_rate.fired


def test_rate_test_rare_outcome_uses_fisher() -> None:
    reference = np.zeros(2000, dtype=bool)
    reference[:2] = True
    current = np.zeros(1000, dtype=bool)
    current[:1] = True

    p_value, _, _ = rate_test(reference, current, alpha=0.05)

    assert p_value.name == FISHER_EXACT_P_VALUE
    assert not p_value.fired


def test_rate_test_no_events_gives_p_value_one() -> None:
    p_value, _, _ = rate_test(np.zeros(2000, dtype=bool), np.zeros(1000, dtype=bool), alpha=0.05)

    assert p_value.value == 1.0
    assert not p_value.fired

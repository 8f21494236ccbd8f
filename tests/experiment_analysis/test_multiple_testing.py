"""The Holm–Bonferroni adjustment against statsmodels."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from shared.experiment_analysis.multiple_testing import holm_adjust


def test_holm_matches_statsmodels() -> None:
    p_values = [0.01, 0.04, 0.03, 0.005, 0.2, 0.04, 0.9]

    adjusted = holm_adjust(p_values)
    _, reference, _, _ = multipletests(p_values, method="holm")

    assert adjusted == pytest.approx(tuple(reference), rel=1e-12)


def test_holm_matches_statsmodels_on_random_p_values() -> None:
    rng = np.random.default_rng(7)
    for count in (1, 2, 5, 24):
        p_values = rng.uniform(0, 0.2, size=count).tolist()

        _, reference, _, _ = multipletests(p_values, method="holm")

        assert holm_adjust(p_values) == pytest.approx(tuple(reference), rel=1e-12)


def test_holm_keeps_order_and_caps_at_one() -> None:
    adjusted = holm_adjust([0.3, 0.01, 0.6])

    assert adjusted == pytest.approx((0.6, 0.03, 0.6))
    assert max(holm_adjust([0.5, 0.7, 0.9])) == 1.0


def test_holm_of_no_p_values_is_empty() -> None:
    assert holm_adjust([]) == ()


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_holm_rejects_values_outside_unit_interval(bad: float) -> None:
    with pytest.raises(ValueError, match=r"p_values\[1\]"):
        holm_adjust([0.01, bad])

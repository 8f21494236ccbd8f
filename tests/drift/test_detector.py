"""The detector on synthetic windows: the alarm rule, the minimum-sample rule, the multiple-comparison rule and hysteresis."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from services.drift.alarms import AlertStatus
from services.drift.config import DriftSettings
from services.drift.detector import Detector, Outcome
from services.drift.embeddings import CENTROID_COSINE_DISTANCE, DOMAIN_CLASSIFIER_ROC_AUC
from services.drift.numeric import KS_P_VALUE, PSI
from services.drift.windows import SignalWindow, WindowPair
from shared.drift_signals import Signal

T0 = datetime(2025, 1, 1, tzinfo=UTC)
T1 = datetime(2025, 1, 2, tzinfo=UTC)
SMALL = DriftSettings(reference_min_samples=400, window_min_samples=200, embedding_samples_per_window=400)


def pair(signal: Signal, reference: np.ndarray, current: np.ndarray, variant: str = "a") -> WindowPair:
    return WindowPair(variant, SignalWindow(signal, T0, T1, reference), SignalWindow(signal, T1, T1, current))


def lengths_pair(rng: np.random.Generator, *, current_median: float) -> WindowPair:
    return pair(Signal.OUTPUT_CHARS, rng.lognormal(np.log(600), 0.8, 400), rng.lognormal(np.log(current_median), 0.8, 200))


def test_shifted_numeric_signal_fires() -> None:
    rng = np.random.default_rng(1)

    report = Detector(SMALL).evaluate([lengths_pair(rng, current_median=40)])

    result = report.results[0]
    assert result.outcome is Outcome.FIRED
    assert [statistic.name for statistic in result.statistics] == [PSI, KS_P_VALUE]


def test_numeric_signal_needs_psi_and_ks() -> None:
    rng = np.random.default_rng(2)
    # At 20,000 samples a 0.1 standard deviation shift is significant for
    # KS, but its PSI (about 0.01) is far below the 0.2 band.
    settings = DriftSettings(reference_min_samples=20_000, window_min_samples=20_000)
    shifted = pair(Signal.PROMPT_CHARS, rng.normal(size=20_000), rng.normal(loc=0.1, size=20_000))

    result = Detector(settings).evaluate([shifted]).results[0]

    psi, ks_p_value = result.statistics
    assert ks_p_value.fired
    assert not psi.fired
    assert result.outcome is Outcome.QUIET


def test_small_window_is_not_compared() -> None:
    rng = np.random.default_rng(3)
    small = pair(Signal.OUTPUT_CHARS, rng.lognormal(6, 1, 400), rng.lognormal(3, 1, 199))

    report = Detector(SMALL).evaluate([small])

    assert report.results[0].outcome is Outcome.TOO_FEW_SAMPLES
    assert report.results[0].statistics == ()
    assert report.alerts == ()


def test_too_few_samples_leaves_alarm_state() -> None:
    rng = np.random.default_rng(4)
    detector = Detector(SMALL)

    detector.evaluate([lengths_pair(rng, current_median=40)])
    detector.evaluate([pair(Signal.OUTPUT_CHARS, rng.lognormal(6, 1, 400), rng.lognormal(6, 1, 10))])
    report = detector.evaluate([lengths_pair(rng, current_median=40)])

    assert [alert.status for alert in report.alerts] == [AlertStatus.FIRING]


def test_bonferroni_counts_compared_p_value_tests() -> None:
    rng = np.random.default_rng(5)
    pairs = [
        pair(Signal.PROMPT_CHARS, rng.normal(size=400), rng.normal(size=200)),
        pair(Signal.OUTPUT_CHARS, rng.normal(size=400), rng.normal(size=200), variant="b"),
        pair(Signal.REFUSAL_RATE, rng.random(400) < 0.1, rng.random(200) < 0.1),
        # Not compared, so not counted.
        pair(Signal.BLOCK_RATE, rng.random(400) < 0.1, rng.random(10) < 0.1),
        # No p-value test, so not counted.
        pair(Signal.PROMPT_EMBEDDING, rng.normal(size=(400, 8)), rng.normal(size=(200, 8))),
    ]

    report = Detector(SMALL).evaluate(pairs)

    assert report.per_test_alpha == pytest.approx(0.05 / 3)
    ks_p_value = report.results[0].statistics[1]
    assert ks_p_value.threshold == pytest.approx(0.05 / 3)


def test_duplicate_pair_rejected() -> None:
    rng = np.random.default_rng(6)

    with pytest.raises(ValueError, match="two window pairs"):
        Detector(SMALL).evaluate([lengths_pair(rng, current_median=600), lengths_pair(rng, current_median=600)])


def test_single_noisy_window_raises_no_alert() -> None:
    rng = np.random.default_rng(7)
    detector = Detector(SMALL)
    medians = [600, 40, 600, 600, 40, 600]

    alerts = [alert for median in medians for alert in detector.evaluate([lengths_pair(rng, current_median=median)]).alerts]

    assert alerts == []
    assert not detector.is_firing("a", Signal.OUTPUT_CHARS)


def test_alert_raises_then_resolves() -> None:
    rng = np.random.default_rng(8)
    detector = Detector(SMALL)
    medians = [600, 40, 40, 40, 600, 600, 600]

    statuses = [
        [alert.status for alert in detector.evaluate([lengths_pair(rng, current_median=median)]).alerts] for median in medians
    ]

    assert statuses == [[], [], [AlertStatus.FIRING], [], [], [], [AlertStatus.RESOLVED]]


def test_alert_names_signal_statistic_and_windows() -> None:
    rng = np.random.default_rng(9)
    detector = Detector(SMALL)

    detector.evaluate([lengths_pair(rng, current_median=40)])
    alert = detector.evaluate([lengths_pair(rng, current_median=40)]).alerts[0]

    assert alert.variant == "a"
    assert alert.signal is Signal.OUTPUT_CHARS
    assert alert.statistic == PSI
    assert alert.value > alert.threshold == SMALL.psi_threshold
    assert alert.reference.sample_count == 400
    assert alert.current.sample_count == 200
    assert alert.current.start == T1


def test_sampled_embedding_uses_store_centroids() -> None:
    rng = np.random.default_rng(10)
    sample = rng.normal(size=(200, 8))
    reference = SignalWindow(Signal.PROMPT_EMBEDDING, T0, T1, sample, row_count=400, row_mean=np.eye(8)[0])
    current = SignalWindow(Signal.PROMPT_EMBEDDING, T1, T1, sample, row_count=200, row_mean=np.eye(8)[1])

    result = Detector(SMALL).evaluate([WindowPair("a", reference, current)]).results[0]

    assert result.outcome is Outcome.QUIET
    assert result.reference.sample_count == 400
    assert [statistic.name for statistic in result.statistics] == [DOMAIN_CLASSIFIER_ROC_AUC, CENTROID_COSINE_DISTANCE]
    assert result.statistics[1].value == pytest.approx(1.0)

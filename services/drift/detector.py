"""The detector: compares each current window with its frozen reference and applies the alarm rules across successive evaluations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from services.drift.alarms import Alert, AlertStatus, Hysteresis, bonferroni_alpha
from services.drift.config import DriftSettings
from services.drift.embeddings import centroid_cosine_distance, domain_classifier_roc_auc
from services.drift.numeric import ks_test, population_stability_index
from services.drift.rates import rate_test
from services.drift.results import StatisticResult
from services.drift.windows import WindowBounds, WindowPair
from shared.drift_signals import Signal, SignalKind

# Signal kinds whose alarm includes one p-value test. The Bonferroni
# correction divides the family's alpha among these tests.
_P_VALUE_KINDS = frozenset({SignalKind.NUMERIC, SignalKind.RATE})


class Outcome(StrEnum):
    """The finding of one comparison of a current window with its reference."""

    FIRED = "fired"
    QUIET = "quiet"
    # Below the minimum-sample rule: not compared, and the alarm state is unchanged.
    TOO_FEW_SAMPLES = "too_few_samples"


@dataclass(frozen=True)
class SignalResult:
    """The comparison of one signal of one variant: a row of a drift report."""

    variant: str
    signal: Signal
    reference: WindowBounds
    current: WindowBounds
    outcome: Outcome
    # Empty when the outcome is TOO_FEW_SAMPLES. Otherwise the first alarm
    # statistic comes first, and it is the statistic an alert names.
    statistics: tuple[StatisticResult, ...]


@dataclass(frozen=True)
class DriftReport:
    """The results and the alerts of one evaluation."""

    results: tuple[SignalResult, ...]
    alerts: tuple[Alert, ...]
    # The Bonferroni-corrected level at which each KS and rate test ran.
    per_test_alpha: float


class Detector:
    """Compares window pairs and keeps the alarm state of every (variant, signal) between evaluations.

    Not thread-safe: one runner calls `evaluate` once per scheduled evaluation.
    """

    def __init__(self, settings: DriftSettings) -> None:
        self._settings = settings
        self._hysteresis = Hysteresis(
            raise_after_windows=settings.raise_after_windows,
            resolve_after_windows=settings.resolve_after_windows,
        )

    def evaluate(self, pairs: Sequence[WindowPair]) -> DriftReport:
        """Compare every pair, update the alarm state, and return the results and any alert that started or ended.

        The pairs of one call form one family for the multiple-comparison
        correction. Raises ValueError when two pairs have the same variant
        and signal, because one window must not count twice in the alarm state.
        """
        _check_unique(pairs)
        comparable = [self._has_enough_samples(pair) for pair in pairs]
        p_value_tests = sum(
            1 for pair, compared in zip(pairs, comparable) if compared and pair.signal.kind in _P_VALUE_KINDS
        )
        alpha = bonferroni_alpha(self._settings.family_alpha, p_value_tests)

        results = []
        alerts = []
        for pair, compared in zip(pairs, comparable):
            result = self._compare(pair, alpha) if compared else _too_few_samples(pair)
            results.append(result)
            alert = self._update_alarm(result)
            if alert is not None:
                alerts.append(alert)
        return DriftReport(results=tuple(results), alerts=tuple(alerts), per_test_alpha=alpha)

    def is_firing(self, variant: str, signal: Signal) -> bool:
        """Return whether an alert is active for (variant, signal)."""
        return self._hysteresis.is_firing(variant, signal)

    def _has_enough_samples(self, pair: WindowPair) -> bool:
        return (
            pair.reference.sample_count >= self._settings.reference_min_samples
            and pair.current.sample_count >= self._settings.window_min_samples
        )

    def _compare(self, pair: WindowPair, alpha: float) -> SignalResult:
        statistics = self._statistics(pair, alpha)
        alarms = [statistic for statistic in statistics if statistic.is_alarm]
        fired = all(statistic.fired for statistic in alarms)
        return SignalResult(
            variant=pair.variant,
            signal=pair.signal,
            reference=pair.reference.bounds,
            current=pair.current.bounds,
            outcome=Outcome.FIRED if fired else Outcome.QUIET,
            statistics=statistics,
        )

    def _statistics(self, pair: WindowPair, alpha: float) -> tuple[StatisticResult, ...]:
        reference = pair.reference.values
        current = pair.current.values
        settings = self._settings
        match pair.signal.kind:
            case SignalKind.NUMERIC:
                return (
                    population_stability_index(reference, current, bins=settings.psi_bins, threshold=settings.psi_threshold),
                    ks_test(reference, current, alpha=alpha),
                )
            case SignalKind.RATE:
                return rate_test(reference, current, alpha=alpha)
            case SignalKind.EMBEDDING:
                roc_auc = domain_classifier_roc_auc(
                    reference,
                    current,
                    threshold=settings.roc_auc_threshold,
                    folds=settings.domain_classifier_folds,
                    max_rows=settings.embedding_samples_per_window,
                )
                # The centroids cover every request of each window, and the classifier only a sample of them.
                return (roc_auc, centroid_cosine_distance(pair.reference.centroid, pair.current.centroid))

    def _update_alarm(self, result: SignalResult) -> Alert | None:
        if result.outcome is Outcome.TOO_FEW_SAMPLES:
            return None
        status = self._hysteresis.observe(result.variant, result.signal, fired=result.outcome is Outcome.FIRED)
        if status is None:
            return None
        return _alert(result, status)


def _alert(result: SignalResult, status: AlertStatus) -> Alert:
    named = next(statistic for statistic in result.statistics if statistic.is_alarm)
    return Alert(
        status=status,
        variant=result.variant,
        signal=result.signal,
        statistic=named.name,
        value=named.value,
        threshold=named.threshold,
        reference=result.reference,
        current=result.current,
        statistics=result.statistics,
    )


def _too_few_samples(pair: WindowPair) -> SignalResult:
    return SignalResult(
        variant=pair.variant,
        signal=pair.signal,
        reference=pair.reference.bounds,
        current=pair.current.bounds,
        outcome=Outcome.TOO_FEW_SAMPLES,
        statistics=(),
    )


def _check_unique(pairs: Sequence[WindowPair]) -> None:
    seen = set()
    for pair in pairs:
        key = (pair.variant, pair.signal)
        if key in seen:
            raise ValueError(
                f"variant {pair.variant!r}, {pair.signal}: two window pairs in one evaluation. "
                "Pass one pair per variant and signal"
            )
        seen.add(key)

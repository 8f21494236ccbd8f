"""Hysteresis, the Bonferroni rule and the alert's JSON form."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from services.drift.alarms import Alert, AlertStatus, Hysteresis, bonferroni_alpha
from services.drift.results import Direction, StatisticResult
from services.drift.windows import WindowBounds
from shared.drift_signals import Signal


def observe_all(hysteresis: Hysteresis, fired: list[bool]) -> list[AlertStatus | None]:
    return [hysteresis.observe("a", Signal.REFUSAL_RATE, fired=value) for value in fired]


def test_single_firing_window_raises_nothing() -> None:
    hysteresis = Hysteresis(raise_after_windows=2, resolve_after_windows=3)

    statuses = observe_all(hysteresis, [False, True, False, True, False])

    assert statuses == [None] * 5
    assert not hysteresis.is_firing("a", Signal.REFUSAL_RATE)


def test_two_firing_windows_raise_alert() -> None:
    hysteresis = Hysteresis(raise_after_windows=2, resolve_after_windows=3)

    statuses = observe_all(hysteresis, [False, True, True, True])

    assert statuses == [None, None, AlertStatus.FIRING, None]
    assert hysteresis.is_firing("a", Signal.REFUSAL_RATE)


def test_alert_resolves_after_quiet_windows() -> None:
    hysteresis = Hysteresis(raise_after_windows=2, resolve_after_windows=3)

    statuses = observe_all(hysteresis, [True, True, False, False, False])

    assert statuses == [None, AlertStatus.FIRING, None, None, AlertStatus.RESOLVED]
    assert not hysteresis.is_firing("a", Signal.REFUSAL_RATE)


def test_firing_window_restarts_resolve_count() -> None:
    hysteresis = Hysteresis(raise_after_windows=2, resolve_after_windows=3)

    statuses = observe_all(hysteresis, [True, True, False, False, True, False, False])

    assert AlertStatus.RESOLVED not in statuses
    assert hysteresis.is_firing("a", Signal.REFUSAL_RATE)


def test_signals_keep_separate_state() -> None:
    hysteresis = Hysteresis(raise_after_windows=2, resolve_after_windows=3)

    hysteresis.observe("a", Signal.REFUSAL_RATE, fired=True)
    status = hysteresis.observe("a", Signal.BLOCK_RATE, fired=True)

    assert status is None


def test_bonferroni_divides_alpha() -> None:
    assert bonferroni_alpha(0.05, 16) == 0.05 / 16
    assert bonferroni_alpha(0.05, 0) == 0.05


def test_alert_json_names_windows_and_statistic() -> None:
    statistic = StatisticResult.compare("psi", 0.7, 0.2, Direction.ABOVE)
    alert = Alert(
        status=AlertStatus.FIRING,
        variant="a",
        signal=Signal.OUTPUT_CHARS,
        statistic=statistic.name,
        value=statistic.value,
        threshold=0.2,
        reference=WindowBounds(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 2, tzinfo=UTC), 2000),
        current=WindowBounds(datetime(2025, 1, 3, tzinfo=UTC), datetime(2025, 1, 4, tzinfo=UTC), 1000),
        statistics=(statistic,),
    )

    document = json.loads(json.dumps(alert.to_json_dict()))

    assert document["status"] == "firing"
    assert document["signal"] == "output_chars"
    assert document["statistic"] == "psi"
    assert document["threshold"] == 0.2
    assert document["reference"] == {"start": "2025-01-01T00:00:00+00:00", "end": "2025-01-02T00:00:00+00:00", "sample_count": 2000}
    assert document["current"]["sample_count"] == 1000
    assert document["statistics"][0]["fired"] is True

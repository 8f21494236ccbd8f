"""The circuit breaker's state machine, driven by a clock the test sets."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from services.inference.circuit_breaker import BreakerState, CircuitBreaker
from tests.inference.manual_clock import ManualClock

ENDPOINT = "http://127.0.0.1:9001"
THRESHOLD = 3
OPEN_S = 10.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def breaker(clock: ManualClock) -> CircuitBreaker:
    return CircuitBreaker(ENDPOINT, failure_threshold=THRESHOLD, open_s=OPEN_S, clock=clock)


def _fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.start_call()
        breaker.record_failure()


def test_new_breaker_closed(breaker: CircuitBreaker) -> None:
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allows_call()
    assert breaker.start_call() is False


def test_opens_at_threshold(breaker: CircuitBreaker) -> None:
    _fail(breaker, THRESHOLD - 1)
    assert breaker.state is BreakerState.CLOSED

    _fail(breaker, 1)

    assert breaker.state is BreakerState.OPEN
    assert breaker.consecutive_failures == THRESHOLD
    assert not breaker.allows_call()


def test_success_resets_failure_count(breaker: CircuitBreaker) -> None:
    _fail(breaker, THRESHOLD - 1)
    breaker.start_call()
    breaker.record_success()
    _fail(breaker, THRESHOLD - 1)

    assert breaker.state is BreakerState.CLOSED
    assert breaker.consecutive_failures == THRESHOLD - 1


def test_open_rejects_until_open_s(breaker: CircuitBreaker, clock: ManualClock) -> None:
    _fail(breaker, THRESHOLD)

    clock.advance(OPEN_S - 0.01)
    assert not breaker.allows_call()
    with pytest.raises(RuntimeError, match="is open"):
        breaker.start_call()

    clock.advance(0.01)
    assert breaker.allows_call()


def test_half_open_lets_one_trial(breaker: CircuitBreaker, clock: ManualClock) -> None:
    _fail(breaker, THRESHOLD)
    clock.advance(OPEN_S)

    trial = breaker.start_call()

    assert trial is True
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allows_call()


def test_trial_success_closes(breaker: CircuitBreaker, clock: ManualClock) -> None:
    _fail(breaker, THRESHOLD)
    clock.advance(OPEN_S)
    breaker.start_call()

    breaker.record_success()

    assert breaker.state is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0
    assert breaker.allows_call()


def test_trial_failure_reopens(breaker: CircuitBreaker, clock: ManualClock) -> None:
    _fail(breaker, THRESHOLD)
    clock.advance(OPEN_S)
    breaker.start_call()

    clock.advance(1.0)
    breaker.record_failure()

    assert breaker.state is BreakerState.OPEN
    assert not breaker.allows_call()
    # The open time restarts at the failed trial, not at the first opening.
    clock.advance(OPEN_S - 0.5)
    assert not breaker.allows_call()
    clock.advance(0.5)
    assert breaker.allows_call()


def test_abandoned_trial_frees_place(breaker: CircuitBreaker, clock: ManualClock) -> None:
    _fail(breaker, THRESHOLD)
    clock.advance(OPEN_S)
    trial = breaker.start_call()

    breaker.abandon_call(trial)

    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allows_call()
    assert breaker.start_call() is True


def test_abandoned_normal_call_keeps_trial(breaker: CircuitBreaker, clock: ManualClock) -> None:
    # A call that started while closed ends without an outcome while the trial runs.
    early_call = breaker.start_call()
    _fail(breaker, THRESHOLD)
    clock.advance(OPEN_S)
    breaker.start_call()

    breaker.abandon_call(early_call)

    assert not breaker.allows_call()


def test_late_failure_keeps_open_time(breaker: CircuitBreaker, clock: ManualClock) -> None:
    # A call that started before the breaker opened fails after it opened.
    breaker.start_call()
    _fail(breaker, THRESHOLD)
    clock.advance(OPEN_S - 1.0)

    breaker.record_failure()

    assert breaker.state is BreakerState.OPEN
    assert breaker.consecutive_failures == THRESHOLD + 1
    clock.advance(1.0)
    assert breaker.allows_call()


def test_threshold_below_one_rejected() -> None:
    with pytest.raises(ValueError, match="failure_threshold is 0"):
        CircuitBreaker(ENDPOINT, failure_threshold=0, open_s=OPEN_S)


def test_transitions_logged(breaker: CircuitBreaker, clock: ManualClock) -> None:
    with capture_logs() as logs:
        _fail(breaker, THRESHOLD)
        clock.advance(OPEN_S)
        breaker.start_call()
        breaker.record_success()

    events = [(entry["event"], entry["endpoint"]) for entry in logs]
    assert events == [
        ("breaker_opened", ENDPOINT),
        ("breaker_half_open", ENDPOINT),
        ("breaker_closed", ENDPOINT),
    ]
    assert logs[0]["consecutive_failures"] == THRESHOLD
    assert logs[0]["log_level"] == "warning"
    assert logs[2]["previous_failures"] == THRESHOLD

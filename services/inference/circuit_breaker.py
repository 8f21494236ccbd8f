"""A circuit breaker for one endpoint: closed, open after consecutive failures, half-open for one trial call.

Written here rather than taken from PyPI. purgatory 3.0.1 checks the state
only when a call enters its context manager, so a pool cannot ask which
endpoints are usable before it chooses one. It also lets every call through
while half-open and reads the wall clock (`time.time()`). aiobreaker had its
last release (1.2.0) in 2021.

Not thread-safe: every method runs on the event loop's thread, and none of
them awaits, so a check and the call start that follows it cannot interleave
with another task.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum

import structlog

log = structlog.get_logger(__name__)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """The breaker of one endpoint.

    Closed, it lets every call through and counts consecutive failures. After
    `failure_threshold` of them it opens and rejects calls for `open_s`
    seconds. The first call after that makes it half-open: that call is the
    only one let through, and its success closes the breaker while its
    failure opens it for another `open_s`. A success in any state closes it,
    because the endpoint responded. `clock` returns seconds and exists so
    that tests control time.
    """

    def __init__(
        self,
        endpoint: str,
        failure_threshold: int,
        open_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold is {failure_threshold}, but it must be at least 1")
        self.endpoint = endpoint
        self._failure_threshold = failure_threshold
        self._open_s = open_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._opened_at_s = 0.0
        self._trial_in_flight = False

    @property
    def state(self) -> BreakerState:
        """The current state. An open breaker stays open until a call starts after `open_s` has passed."""
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive_failures

    def allows_call(self) -> bool:
        """Return whether a call may start now. Changes nothing."""
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.HALF_OPEN:
            return not self._trial_in_flight
        return self._clock() - self._opened_at_s >= self._open_s

    def start_call(self) -> bool:
        """Record that a call starts, and return True when it is the half-open trial call.

        Raises RuntimeError when `allows_call()` is false: the caller must check first.
        """
        if not self.allows_call():
            raise RuntimeError(f"the circuit breaker of {self.endpoint} is {self._state}; check allows_call() first")
        if self._state is BreakerState.CLOSED:
            return False
        if self._state is BreakerState.OPEN:
            self._state = BreakerState.HALF_OPEN
            log.info("breaker_half_open", endpoint=self.endpoint, consecutive_failures=self._consecutive_failures)
        self._trial_in_flight = True
        return True

    def record_success(self) -> None:
        """Record a call that the endpoint responded to, and close the breaker."""
        previous_failures = self._consecutive_failures
        self._consecutive_failures = 0
        self._trial_in_flight = False
        if self._state is not BreakerState.CLOSED:
            self._state = BreakerState.CLOSED
            log.info("breaker_closed", endpoint=self.endpoint, previous_failures=previous_failures)

    def record_failure(self) -> None:
        """Record a retryable failure: open the breaker at the threshold, or again after a failed trial call."""
        self._consecutive_failures += 1
        if self._state is BreakerState.HALF_OPEN:
            self._open()
        elif self._state is BreakerState.CLOSED and self._consecutive_failures >= self._failure_threshold:
            self._open()

    def abandon_call(self, trial: bool) -> None:
        """Record a call that ended without an outcome, such as a cancelled one. A trial call frees its place for another."""
        if trial and self._state is BreakerState.HALF_OPEN:
            self._trial_in_flight = False

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at_s = self._clock()
        self._trial_in_flight = False
        log.warning(
            "breaker_opened",
            endpoint=self.endpoint,
            consecutive_failures=self._consecutive_failures,
            open_s=self._open_s,
        )

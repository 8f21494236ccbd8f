"""A clock for tests that control time, in the shape of `time.monotonic`."""

from __future__ import annotations


class ManualClock:
    """Seconds that move only when the test calls `advance`."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds

"""The clock of one generation attempt: queue time, time to first token and gaps between tokens.

Every outcome of an attempt (completed, failed, cancelled) turns the clock
into a `GenerationStats`, so a partial stream is accounted for as fully as a
finished one.
"""

from __future__ import annotations

import math
import time
from datetime import datetime

from shared.events import GenerationStats, LatencyPercentiles, Usage, utc_now


def percentiles(durations_ms: list[float]) -> LatencyPercentiles | None:
    """Return nearest-rank percentiles of `durations_ms`, or None when the list is empty."""
    if not durations_ms:
        return None
    ordered = sorted(durations_ms)

    def rank(fraction: float) -> float:
        return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]

    return LatencyPercentiles(
        p50_ms=round(rank(0.50), 3), p95_ms=round(rank(0.95), 3), p99_ms=round(rank(0.99), 3), max_ms=round(ordered[-1], 3)
    )


class AttemptClock:
    """Times one attempt from the moment the inference service takes the request.

    `queued_since` is when the request entered the endpoint pool's queue (the
    `request.assigned` event's timestamp).
    """

    def __init__(self, queued_since: datetime) -> None:
        self.started_s = time.monotonic()
        self.queue_ms = max(0.0, (utc_now() - queued_since).total_seconds() * 1000.0)
        self._piece_times_s: list[float] = []

    @property
    def elapsed_ms(self) -> float:
        return (time.monotonic() - self.started_s) * 1000.0

    @property
    def pieces(self) -> int:
        """How many pieces of text the backend streamed so far."""
        return len(self._piece_times_s)

    def piece_arrived(self) -> None:
        """Record that the backend streamed one more piece of text."""
        self._piece_times_s.append(time.monotonic())

    def stats(
        self, backend: str, endpoint: str | None, finish_reason: str, usage: Usage | None = None
    ) -> GenerationStats:
        """Return the attempt's accounting. `usage` is the backend's own count, known when the stream ended normally."""
        times = self._piece_times_s
        ttft_ms = (times[0] - self.started_s) * 1000.0 if times else None
        gaps_ms = [(later - earlier) * 1000.0 for earlier, later in zip(times, times[1:])]
        return GenerationStats(
            backend=backend,
            endpoint=endpoint,
            prompt_tokens=usage.prompt_tokens if usage is not None else None,
            completion_tokens=usage.completion_tokens if usage is not None else len(times),
            queue_ms=round(self.queue_ms, 3),
            ttft_ms=None if ttft_ms is None else round(ttft_ms, 3),
            inter_token=percentiles(gaps_ms),
            finish_reason=finish_reason,
        )

"""An open-loop load generator: requests start at a fixed arrival rate whether or not earlier ones finished.

Request i is due at `i / rate` seconds after the start. All requests run as
tasks on one asyncio event loop. Latencies are measured from the due time,
not from the moment the task got to send. A generator that falls behind
therefore adds its lag to the figures instead of hiding it (coordinated
omission). The launch lag is reported beside them so that case is visible.
The generator shares the machine with the system under test, so it measures
its own CPU time (`time.process_time`, every thread of this process).

The two request kinds, straight to a TGI-protocol backend and through the
Sluice API, live in `load_tests.open_loop_clients`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

# The percentiles every report shows.
PERCENTILES = (50.0, 95.0, 99.0)


@dataclass(frozen=True)
class RequestResult:
    """One request's outcome. Latencies are seconds from the request's due time, and `error` is None on success."""

    error: str | None = None
    ttft_s: float | None = None
    total_s: float | None = None


# Sends one request that was due at `time.perf_counter()` value `due` and returns its outcome.
RequestFunction = Callable[[float], Awaitable[RequestResult]]


@dataclass
class LoadResult:
    """What one open-loop run measured. Every time is in seconds."""

    rate_rps: float
    duration_s: float
    sent: int = 0
    completed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    ttft_s: list[float] = field(default_factory=list)
    total_s: list[float] = field(default_factory=list)
    launch_lag_s: list[float] = field(default_factory=list)
    # From the first due time to the end of the last request that completed.
    wall_s: float = 0.0
    # The generator's own CPU time over the run.
    cpu_s: float = 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def throughput_rps(self) -> float:
        """Return the completed requests per second of wall time."""
        return self.completed / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000.0 * self.cpu_s / self.sent if self.sent else math.nan

    def add(self, result: RequestResult, elapsed_s: float) -> None:
        """Count one request that ended `elapsed_s` seconds after the run's start."""
        if result.error is not None:
            self.errors[result.error] += 1
            return
        self.completed += 1
        self.wall_s = max(self.wall_s, elapsed_s)
        if result.ttft_s is not None:
            self.ttft_s.append(result.ttft_s)
        if result.total_s is not None:
            self.total_s.append(result.total_s)


def arrival_offsets(rate_rps: float, duration_s: float) -> list[float]:
    """Return the due time of every request, in seconds from the start, for a fixed rate over `duration_s`.

    Raises ValueError when the rate or the duration is not positive.
    """
    if rate_rps <= 0 or duration_s <= 0:
        raise ValueError(f"rate and duration must be positive, got rate {rate_rps} req/s and duration {duration_s} s")
    count = max(1, round(rate_rps * duration_s))
    return [index / rate_rps for index in range(count)]


def percentiles_ms(values_s: Sequence[float], points: Sequence[float] = PERCENTILES) -> list[float]:
    """Return the percentiles of `values_s` in milliseconds, NaN for each when there are no values."""
    if not values_s:
        return [math.nan for _ in points]
    return [float(value) * 1000.0 for value in np.percentile(np.asarray(values_s, dtype=float), points)]


async def _timed(send: RequestFunction, due: float, timeout_s: float) -> tuple[RequestResult, float]:
    """Return the request's outcome and the `time.perf_counter()` value when it ended.

    The timeout counts from the due time, so a request that the generator starts late has less time.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (due + timeout_s - time.perf_counter())
    try:
        async with asyncio.timeout_at(deadline):
            outcome = await send(due)
    except TimeoutError:
        outcome = RequestResult(error="timeout")
    return outcome, time.perf_counter()


async def run_open_loop(send: RequestFunction, rate_rps: float, duration_s: float, timeout_s: float) -> LoadResult:
    """Start `send` at `rate_rps` for `duration_s` seconds and wait for every request.

    A request that has not ended `timeout_s` seconds after its due time counts
    as the error "timeout", so the run ends about `duration_s + timeout_s`
    seconds after its start even when the generator falls behind.
    """
    result = LoadResult(rate_rps=rate_rps, duration_s=duration_s)
    tasks: list[asyncio.Task[tuple[RequestResult, float]]] = []
    cpu_start = time.process_time()
    start = time.perf_counter()
    for offset in arrival_offsets(rate_rps, duration_s):
        due = start + offset
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        result.launch_lag_s.append(max(0.0, time.perf_counter() - due))
        tasks.append(asyncio.create_task(_timed(send, due, timeout_s)))
    result.sent = len(tasks)
    for outcome, ended in await asyncio.gather(*tasks):
        result.add(outcome, ended - start)
    result.cpu_s = time.process_time() - cpu_start
    return result

"""Timing calls one after another and summarising their latency, for the closed-loop benchmarks.

Percentiles interpolate linearly between samples (numpy's default), as the
open-loop generator's do, so every table of the benchmarks page reads alike.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

NS_PER_US = 1_000
NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000

# One timed call: receives the iteration index (warm-up included) and is awaited.
IndexedCall = Callable[[int], Awaitable[object]]


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles of one timed loop, in nanoseconds, and the loop's wall time."""

    samples: int
    p50_ns: float
    p99_ns: float
    elapsed_ns: int

    @property
    def per_second(self) -> float:
        """Iterations per second over the whole loop, time between iterations included."""
        return self.samples * NS_PER_S / self.elapsed_ns if self.elapsed_ns else 0.0


def summarize(durations_ns: Sequence[int], elapsed_ns: int) -> LatencySummary:
    """Summarise the per-iteration durations of a loop that took `elapsed_ns` in all.

    Raises `ValueError` when `durations_ns` is empty.
    """
    if not durations_ns:
        raise ValueError("cannot summarise a loop with no timed iterations; time at least one")
    p50_ns, p99_ns = np.percentile(np.asarray(durations_ns, dtype=float), [50.0, 99.0])
    return LatencySummary(samples=len(durations_ns), p50_ns=float(p50_ns), p99_ns=float(p99_ns), elapsed_ns=elapsed_ns)


async def time_sequential(call: IndexedCall, count: int, warmup: int) -> LatencySummary:
    """Await `call(i)` for `warmup` untimed iterations, then time `count` more, one at a time.

    Indexes run from 0 to `warmup + count - 1`, so a call can pick a distinct input each time.
    """
    for index in range(warmup):
        await call(index)

    durations_ns: list[int] = []
    started_ns = time.perf_counter_ns()
    for index in range(warmup, warmup + count):
        call_started_ns = time.perf_counter_ns()
        await call(index)
        durations_ns.append(time.perf_counter_ns() - call_started_ns)
    return summarize(durations_ns, time.perf_counter_ns() - started_ns)


def format_us(duration_ns: float) -> str:
    return f"{duration_ns / NS_PER_US:,.0f}"


def format_ms(duration_ns: float) -> str:
    return f"{duration_ns / NS_PER_MS:,.3f}"

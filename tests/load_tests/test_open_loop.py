"""The open-loop generator's schedule, percentiles and bookkeeping, driven by in-process request functions."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from load_tests.open_loop import LoadResult, RequestResult, _timed, arrival_offsets, percentiles_ms, run_open_loop


def test_arrival_offsets_space_requests_evenly() -> None:
    offsets = arrival_offsets(rate_rps=4.0, duration_s=1.0)

    assert offsets == [0.0, 0.25, 0.5, 0.75]


def test_arrival_offsets_send_at_least_one() -> None:
    assert arrival_offsets(rate_rps=1.0, duration_s=0.1) == [0.0]


@pytest.mark.parametrize(("rate_rps", "duration_s"), [(0.0, 1.0), (-5.0, 1.0), (10.0, 0.0)])
def test_arrival_offsets_reject_non_positive(rate_rps: float, duration_s: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        arrival_offsets(rate_rps, duration_s)


def test_percentiles_in_milliseconds() -> None:
    values_s = [index / 1000.0 for index in range(1, 101)]

    p50, p95, p99 = percentiles_ms(values_s)

    assert p50 == pytest.approx(50.5)
    assert p95 == pytest.approx(95.05)
    assert p99 == pytest.approx(99.01)


def test_percentiles_of_nothing_are_nan() -> None:
    assert all(math.isnan(value) for value in percentiles_ms([]))


def test_load_result_counts_errors_apart() -> None:
    result = LoadResult(rate_rps=10.0, duration_s=1.0, sent=3)

    result.add(RequestResult(ttft_s=0.01, total_s=0.02), elapsed_s=0.5)
    result.add(RequestResult(error="timeout"), elapsed_s=9.0)
    result.add(RequestResult(error="timeout"), elapsed_s=9.0)

    assert result.completed == 1
    assert result.error_count == 2
    assert result.errors["timeout"] == 2
    assert result.total_s == [0.02]
    # Throughput counts time up to the last completed request, not the timeouts after it.
    assert result.throughput_rps == pytest.approx(2.0)


async def test_run_open_loop_keeps_arrival_rate() -> None:
    started: list[float] = []

    async def send(due: float) -> RequestResult:
        started.append(due)
        await asyncio.sleep(0.05)
        return RequestResult(ttft_s=0.0, total_s=0.05)

    result = await run_open_loop(send, rate_rps=100.0, duration_s=0.2, timeout_s=1.0)

    assert result.sent == 20
    assert result.completed == 20
    # Open loop: later requests start while earlier ones still sleep.
    assert started[-1] - started[0] == pytest.approx(0.19)
    assert result.cpu_s >= 0.0


async def test_run_open_loop_times_out_slow_requests() -> None:
    async def send(due: float) -> RequestResult:
        await asyncio.sleep(10.0)
        return RequestResult(ttft_s=0.0, total_s=10.0)

    result = await run_open_loop(send, rate_rps=50.0, duration_s=0.1, timeout_s=0.05)

    assert result.completed == 0
    assert result.errors == {"timeout": 5}


async def test_timeout_counts_from_due_time() -> None:
    async def send(due: float) -> RequestResult:
        await asyncio.sleep(10.0)
        return RequestResult(ttft_s=0.0, total_s=10.0)

    started = time.perf_counter()
    # Due a second ago with a half-second timeout: already too late when it starts.
    outcome, _ended = await _timed(send, due=started - 1.0, timeout_s=0.5)

    assert outcome.error == "timeout"
    assert time.perf_counter() - started < 0.2

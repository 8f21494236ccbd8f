"""Percentiles and the sequential timing loop of the closed-loop benchmarks."""

from __future__ import annotations

import pytest

from load_tests.latency import LatencySummary, format_ms, format_us, summarize, time_sequential


def test_summarize_interpolates_percentiles() -> None:
    summary = summarize(list(range(1, 101)), elapsed_ns=1_000)

    assert summary.samples == 100
    assert summary.p50_ns == pytest.approx(50.5)
    assert summary.p99_ns == pytest.approx(99.01)


def test_summarize_rejects_no_samples() -> None:
    with pytest.raises(ValueError, match="no timed iterations"):
        summarize([], elapsed_ns=1_000)


def test_per_second_counts_whole_loop() -> None:
    summary = LatencySummary(samples=500, p50_ns=1.0, p99_ns=2.0, elapsed_ns=250_000_000)

    assert summary.per_second == pytest.approx(2_000.0)


async def test_time_sequential_passes_every_index() -> None:
    seen: list[int] = []

    async def call(index: int) -> None:
        seen.append(index)

    summary = await time_sequential(call, count=5, warmup=3)

    assert seen == list(range(8))
    assert summary.samples == 5


def test_formats_round_to_unit() -> None:
    assert format_us(1_499) == "1"
    assert format_ms(1_234_567) == "1.235"
    assert format_us(1_234_567) == "1,235"

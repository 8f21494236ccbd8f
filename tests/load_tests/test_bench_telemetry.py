"""Sizing the telemetry benchmark's measured batch to its time budget."""

from __future__ import annotations

from load_tests.bench_telemetry import (
    BATCH_ROUNDING,
    DRAIN_TIMEOUT_FACTOR,
    FULL_EVENTS,
    FULL_INGEST_BUDGET_S,
    MIN_DRAIN_TIMEOUT_S,
    QUICK_EVENTS,
    drain_timeout_s,
    measured_batch_size,
)


def test_quick_batch_is_fixed() -> None:
    assert measured_batch_size(quick=True, warmup_rate=10.0) == QUICK_EVENTS


def test_fast_ingest_gets_full_batch() -> None:
    assert measured_batch_size(quick=False, warmup_rate=1_000_000.0) == FULL_EVENTS


def test_slow_ingest_cuts_batch_to_budget() -> None:
    size = measured_batch_size(quick=False, warmup_rate=1_234.0)

    assert size == int(1_234.0 * FULL_INGEST_BUDGET_S) // BATCH_ROUNDING * BATCH_ROUNDING
    assert size / 1_234.0 <= FULL_INGEST_BUDGET_S


def test_batch_never_below_rounding() -> None:
    assert measured_batch_size(quick=False, warmup_rate=1.0) == BATCH_ROUNDING


def test_drain_timeout_has_floor() -> None:
    assert drain_timeout_s(count=100, warmup_rate=1_000.0) == MIN_DRAIN_TIMEOUT_S


def test_drain_timeout_scales_with_batch() -> None:
    assert drain_timeout_s(count=500_000, warmup_rate=1_000.0) == DRAIN_TIMEOUT_FACTOR * 500.0

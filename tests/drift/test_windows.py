"""Reference freezing, window closing and sample validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from services.drift.embedding_summary import EmbeddingSummary
from services.drift.windows import DriftWindows, SignalWindow, WindowPair
from shared.drift_signals import Signal

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_first_full_window_becomes_reference() -> None:
    windows = DriftWindows(reference_min_samples=20, window_min_samples=10)

    windows.add("a", Signal.PROMPT_CHARS, np.arange(20.0), start=at(0), end=at(5))

    assert windows.take_ready() == []
    reference = windows.reference("a", Signal.PROMPT_CHARS)
    assert reference is not None
    assert reference.sample_count == 20
    assert reference.start == at(0)
    assert reference.end == at(5)


def test_small_window_keeps_collecting() -> None:
    windows = DriftWindows(reference_min_samples=20, window_min_samples=10)
    windows.add("a", Signal.PROMPT_CHARS, np.arange(20.0), start=at(0), end=at(5))
    windows.take_ready()

    windows.add("a", Signal.PROMPT_CHARS, np.arange(6.0), start=at(5), end=at(10))
    assert windows.take_ready() == []
    windows.add("a", Signal.PROMPT_CHARS, np.arange(6.0), start=at(10), end=at(15))
    pairs = windows.take_ready()

    assert len(pairs) == 1
    assert pairs[0].current.sample_count == 12
    assert pairs[0].current.start == at(5)
    assert pairs[0].current.end == at(15)
    assert pairs[0].reference.sample_count == 20


def test_windows_do_not_share_samples() -> None:
    windows = DriftWindows(reference_min_samples=10, window_min_samples=10)
    windows.add("a", Signal.REFUSAL_RATE, np.zeros(10), start=at(0), end=at(1))
    windows.take_ready()

    windows.add("a", Signal.REFUSAL_RATE, np.ones(10), start=at(1), end=at(2))
    first = windows.take_ready()
    windows.add("a", Signal.REFUSAL_RATE, np.zeros(10), start=at(2), end=at(3))
    second = windows.take_ready()

    assert first[0].current.values.all()
    assert not second[0].current.values.any()
    assert second[0].current.start == at(2)


def test_signals_and_variants_collect_separately() -> None:
    windows = DriftWindows(reference_min_samples=5, window_min_samples=5)
    for variant in ("a", "b"):
        windows.add(variant, Signal.PROMPT_CHARS, np.arange(5.0), start=at(0), end=at(1))
        windows.add(variant, Signal.FEEDBACK_RATE, np.zeros(2), start=at(0), end=at(1))
    windows.take_ready()

    assert windows.reference("a", Signal.PROMPT_CHARS) is not None
    assert windows.reference("b", Signal.PROMPT_CHARS) is not None
    assert windows.reference("a", Signal.FEEDBACK_RATE) is None


def test_overlapping_batch_is_rejected() -> None:
    windows = DriftWindows(reference_min_samples=100, window_min_samples=10)
    windows.add("a", Signal.PROMPT_CHARS, np.arange(5.0), start=at(0), end=at(10))

    with pytest.raises(ValueError, match="before the previous batch ended"):
        windows.add("a", Signal.PROMPT_CHARS, np.arange(5.0), start=at(5), end=at(15))


def test_frozen_reference_cannot_be_replaced() -> None:
    windows = DriftWindows(reference_min_samples=5, window_min_samples=5)
    window = SignalWindow(Signal.OUTPUT_CHARS, at(0), at(1), np.arange(5.0))
    windows.freeze_reference("a", window)

    with pytest.raises(ValueError, match="already frozen"):
        windows.freeze_reference("a", window)


def test_loaded_reference_pairs_with_first_window() -> None:
    windows = DriftWindows(reference_min_samples=50, window_min_samples=5)
    windows.freeze_reference("a", SignalWindow(Signal.OUTPUT_CHARS, at(0), at(1), np.arange(50.0)))

    windows.add("a", Signal.OUTPUT_CHARS, np.arange(5.0), start=at(1), end=at(2))
    pairs = windows.take_ready()

    assert [pair.signal for pair in pairs] == [Signal.OUTPUT_CHARS]


def test_window_values_are_read_only_copies() -> None:
    values = np.arange(5.0)
    window = SignalWindow(Signal.PROMPT_CHARS, at(0), at(1), values)
    values[0] = 99.0

    assert window.values[0] == 0.0
    with pytest.raises(ValueError):
        window.values[0] = 1.0


@pytest.mark.parametrize(
    ("signal", "values", "message"),
    [
        (Signal.PROMPT_CHARS, np.zeros((3, 2)), "shape"),
        (Signal.PROMPT_CHARS, np.array([1.0, np.nan]), "NaN"),
        (Signal.PROMPT_EMBEDDING, np.zeros(3), "shape"),
        (Signal.REFUSAL_RATE, np.array([0, 1, 2]), "0/1 outcomes"),
    ],
)
def test_window_rejects_invalid_values(signal: Signal, values: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SignalWindow(signal, at(0), at(1), values)


def test_window_rejects_end_before_start() -> None:
    with pytest.raises(ValueError, match="before it starts"):
        SignalWindow(Signal.PROMPT_CHARS, at(1), at(0), np.arange(3.0))


def test_pair_rejects_mismatched_embedding_dimensions() -> None:
    reference = SignalWindow(Signal.PROMPT_EMBEDDING, at(0), at(1), np.zeros((4, 384)))
    current = SignalWindow(Signal.PROMPT_EMBEDDING, at(1), at(2), np.zeros((4, 768)))

    with pytest.raises(ValueError, match="same encoder"):
        WindowPair("a", reference, current)


def test_pair_rejects_different_signals() -> None:
    reference = SignalWindow(Signal.PROMPT_CHARS, at(0), at(1), np.zeros(4))
    current = SignalWindow(Signal.OUTPUT_CHARS, at(1), at(2), np.zeros(4))

    with pytest.raises(ValueError, match="same signal"):
        WindowPair("a", reference, current)


def embedding_summary(count: int, first_key: int, limit: int = 4) -> EmbeddingSummary:
    """Summarize `count` requests whose embeddings are all (1, 0, 0), with keys counting up from `first_key`."""
    rows = np.tile(np.array([1.0, 0.0, 0.0], dtype=np.float32), (count, 1))
    keys = np.arange(first_key, first_key + count, dtype=np.uint64)
    sampled = min(count, limit)
    return EmbeddingSummary(count, rows.sum(axis=0), keys[:sampled], rows[:sampled], limit)


def test_embedding_summaries_fill_window_by_count() -> None:
    windows = DriftWindows(reference_min_samples=6, window_min_samples=5)
    windows.add("a", Signal.PROMPT_EMBEDDING, embedding_summary(6, 0), start=at(0), end=at(1))
    windows.take_ready()

    windows.add("a", Signal.PROMPT_EMBEDDING, embedding_summary(3, 100), start=at(1), end=at(2))
    assert windows.take_ready() == []
    windows.add("a", Signal.PROMPT_EMBEDDING, embedding_summary(3, 10), start=at(2), end=at(3))
    pairs = windows.take_ready()

    current = pairs[0].current
    assert current.sample_count == 6
    assert current.values.shape == (4, 3)
    assert np.allclose(current.centroid, [1.0, 0.0, 0.0])
    assert current.start == at(1)
    assert current.end == at(3)
    assert pairs[0].reference.sample_count == 6


def test_embedding_window_rejects_rows_after_summary() -> None:
    windows = DriftWindows(reference_min_samples=6, window_min_samples=5)
    windows.add("a", Signal.PROMPT_EMBEDDING, embedding_summary(2, 0), start=at(0), end=at(1))

    with pytest.raises(ValueError, match="either rows or summaries"):
        windows.add("a", Signal.PROMPT_EMBEDDING, np.zeros((2, 3)), start=at(1), end=at(2))


def test_summary_rejected_for_numeric_signal() -> None:
    windows = DriftWindows(reference_min_samples=6, window_min_samples=5)

    with pytest.raises(ValueError, match="numeric signal"):
        windows.add("a", Signal.PROMPT_CHARS, embedding_summary(2, 0), start=at(0), end=at(1))


def test_sampled_window_counts_every_row() -> None:
    window = SignalWindow.of_embeddings(Signal.PROMPT_EMBEDDING, at(0), at(1), embedding_summary(10, 0))

    assert window.sample_count == 10
    assert len(window.values) == 4
    assert window.bounds.sample_count == 10


def test_row_mean_must_match_sample() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        SignalWindow(Signal.PROMPT_EMBEDDING, at(0), at(1), np.zeros((4, 3)), row_count=10, row_mean=np.zeros(5))

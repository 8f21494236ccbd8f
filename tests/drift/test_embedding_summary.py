"""Embedding summaries: bottom-k merging, centroids and validation."""

from __future__ import annotations

import numpy as np
import pytest

from services.drift.embedding_summary import EmbeddingSummary

DIMENSIONS = 8


def summarize(keys: np.ndarray, rows: np.ndarray, limit: int) -> EmbeddingSummary:
    """Summarize `rows` as the store does: count and sum all of them, and keep the `limit` smallest keys."""
    smallest = np.argsort(keys)[:limit]
    return EmbeddingSummary(len(rows), rows.astype(np.float64).sum(axis=0), keys[smallest], rows[smallest], limit)


def random_requests(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 2**63, size=count, dtype=np.uint64)
    rows = rng.normal(size=(count, DIMENSIONS)).astype(np.float32)
    return keys, rows


def test_merged_sample_equals_one_read() -> None:
    keys, rows = random_requests(300, 1)
    whole = summarize(keys, rows, 50)

    merged = summarize(keys[:70], rows[:70], 50).merged(summarize(keys[70:], rows[70:], 50))

    assert merged.count == 300
    assert np.array_equal(merged.sample_keys, whole.sample_keys)
    assert np.array_equal(merged.sample_rows, whole.sample_rows)
    assert np.allclose(merged.centroid, rows.astype(np.float64).mean(axis=0))


def test_merged_sample_keeps_small_ranges() -> None:
    keys, rows = random_requests(30, 2)

    merged = summarize(keys[:10], rows[:10], 50).merged(summarize(keys[10:], rows[10:], 50))

    assert merged.count == 30
    assert len(merged.sample_rows) == 30


def test_empty_summary_merges_as_identity() -> None:
    keys, rows = random_requests(20, 3)
    summary = summarize(keys, rows, 10)

    assert EmbeddingSummary.empty(10).merged(summary) is summary
    assert summary.merged(EmbeddingSummary.empty(10)) is summary


def test_empty_summary_has_no_centroid() -> None:
    with pytest.raises(ValueError, match="no centroid"):
        _ = EmbeddingSummary.empty(10).centroid


def test_merge_rejects_other_sample_limit() -> None:
    keys, rows = random_requests(20, 4)

    with pytest.raises(ValueError, match="same sample limit"):
        summarize(keys, rows, 10).merged(summarize(keys, rows, 20))


def test_merge_rejects_other_dimensions() -> None:
    keys, rows = random_requests(20, 5)
    wider = np.hstack([rows, rows])

    with pytest.raises(ValueError, match="same encoder"):
        summarize(keys, rows, 10).merged(summarize(keys, wider, 10))


@pytest.mark.parametrize(
    ("count", "limit", "vector_sum", "match"),
    [
        (3, 2, np.zeros(DIMENSIONS), "exceeds its limit"),
        (1, 5, np.zeros(DIMENSIONS), "request count"),
        (3, 5, np.zeros(DIMENSIONS + 1), "does not match"),
    ],
)
def test_summary_rejects_inconsistent_sample(count: int, limit: int, vector_sum: np.ndarray, match: str) -> None:
    keys, rows = random_requests(3, 6)

    with pytest.raises(ValueError, match=match):
        EmbeddingSummary(count, vector_sum, keys, rows, limit)


def test_summary_rejects_nan_rows() -> None:
    keys, rows = random_requests(3, 7)
    rows[1, 2] = np.nan

    with pytest.raises(ValueError, match="NaN"):
        EmbeddingSummary(3, np.zeros(DIMENSIONS), keys, rows, 5)

"""A time range's prompt embeddings as the store returns them: their count and sum, and a bounded sample of rows.

Raw embeddings never travel in bulk: the store sums them in ClickHouse, so
the centroid of any number of requests costs one row, and only the sample
that the domain classifier trains on crosses the bus. The sample is a
bottom-k sample: the `sample_limit` requests with the smallest sample keys
(cityHash64 of the request id). Request ids are random, so the sample is
uniform over the range. Keeping the smallest keys of the union of two
samples gives exactly the sample that one read over both ranges would
return. So a window that fills over several reads still contains at most
`sample_limit` rows, drawn uniformly from the whole window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


# eq=False: equality by identity, because comparing arrays element by element is not what == should mean here.
@dataclass(frozen=True, eq=False)
class EmbeddingSummary:
    """The embeddings of `count` requests: their sum over every request, and a bottom-k sample of their rows.

    `vector_sum` is float64 of shape (dimensions,), or (0,) when `count` is
    0. `sample_keys` (uint64, shape (k,)) and `sample_rows` (float32, shape
    (k, dimensions)) hold the k <= `sample_limit` sampled requests, in
    ascending key order. Raises ValueError when the shapes disagree, the
    sample is larger than its limit or than `count`, or a value is not finite.
    """

    count: int
    vector_sum: np.ndarray
    sample_keys: np.ndarray
    sample_rows: np.ndarray
    sample_limit: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "vector_sum", np.asarray(self.vector_sum, dtype=np.float64))
        object.__setattr__(self, "sample_keys", np.asarray(self.sample_keys, dtype=np.uint64))
        rows = np.asarray(self.sample_rows, dtype=np.float32)
        # An empty sample may arrive flat, with shape (0,).
        object.__setattr__(self, "sample_rows", rows.reshape(0, 0) if rows.size == 0 and rows.ndim == 1 else rows)
        self._check_sample()
        self._check_sum()

    @classmethod
    def empty(cls, sample_limit: int) -> EmbeddingSummary:
        """Return the summary of a time range without embeddings."""
        return cls(0, np.zeros(0), np.zeros(0, dtype=np.uint64), np.zeros((0, 0), dtype=np.float32), sample_limit)

    @property
    def dimensions(self) -> int:
        return len(self.vector_sum)

    @property
    def centroid(self) -> np.ndarray:
        """Return the mean embedding of all `count` requests. Raises ValueError for an empty summary."""
        if self.count == 0:
            raise ValueError("an embedding summary of 0 requests has no centroid")
        return self.vector_sum / self.count

    def merged(self, other: EmbeddingSummary) -> EmbeddingSummary:
        """Return the summary of both time ranges, which must not overlap.

        Raises ValueError when the sample limits or the dimensions differ.
        """
        if other.sample_limit != self.sample_limit:
            raise ValueError(
                f"cannot merge embedding samples of {self.sample_limit} and {other.sample_limit} rows at most. "
                "Read every time range of a window with the same sample limit"
            )
        if self.count == 0:
            return other
        if other.count == 0:
            return self
        if other.dimensions != self.dimensions:
            raise ValueError(
                f"cannot merge embeddings of {self.dimensions} and {other.dimensions} dimensions. "
                "Embed every request of a window with the same encoder"
            )

        keys = np.concatenate([self.sample_keys, other.sample_keys])
        rows = np.concatenate([self.sample_rows, other.sample_rows])
        smallest = np.argsort(keys, kind="stable")[: self.sample_limit]
        return EmbeddingSummary(
            count=self.count + other.count,
            vector_sum=self.vector_sum + other.vector_sum,
            sample_keys=keys[smallest],
            sample_rows=rows[smallest],
            sample_limit=self.sample_limit,
        )

    def _check_sample(self) -> None:
        sampled = len(self.sample_keys)
        if self.sample_keys.ndim != 1 or self.sample_rows.ndim != 2 or len(self.sample_rows) != sampled:
            raise ValueError(
                f"embedding sample keys of shape {self.sample_keys.shape} do not match rows of shape "
                f"{self.sample_rows.shape}. Pass one key per row and rows of shape (k, dimensions)"
            )
        if sampled > min(self.sample_limit, self.count):
            raise ValueError(
                f"embedding sample of {sampled} rows exceeds its limit ({self.sample_limit}) or its "
                f"request count ({self.count})"
            )
        if not np.all(np.isfinite(self.sample_rows)):
            raise ValueError("embedding sample contains NaN or infinite values. Drop or fix those requests")

    def _check_sum(self) -> None:
        expected = self.sample_rows.shape[1] if len(self.sample_rows) else len(self.vector_sum)
        if self.vector_sum.ndim != 1 or len(self.vector_sum) != expected:
            raise ValueError(
                f"embedding sum of shape {self.vector_sum.shape} does not match sample rows of shape "
                f"{self.sample_rows.shape}. Sum the same embeddings that were sampled"
            )
        if self.count > 0 and (self.dimensions == 0 or not np.all(np.isfinite(self.vector_sum))):
            raise ValueError(
                f"embedding sum of {self.count} requests must be finite and non-empty, got shape {self.vector_sum.shape}"
            )

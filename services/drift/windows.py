"""The frozen reference window and the rolling current window of every (variant, signal).

Each (variant, signal) collects samples on its own, because signals arrive
at different rates: every request has a prompt length, only completed ones
have an output length, and few get feedback. The first window to reach
`reference_min_samples` is frozen as the reference. Later windows close as
soon as an evaluation finds `window_min_samples` in them, and a window with
fewer keeps collecting, so no comparison runs on a small, noisy sample.
Consecutive windows share no samples, so the hysteresis in `alarms` counts
independent evidence. A prompt embedding window read from the store
collects `EmbeddingSummary` batches instead of rows: it counts every
request, and keeps only a bounded sample of their embeddings.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from services.drift.embedding_summary import EmbeddingSummary
from shared.drift_signals import Signal, SignalKind


@dataclass(frozen=True)
class WindowBounds:
    """When a window started and ended, and how many samples it held."""

    start: datetime
    end: datetime
    sample_count: int


# eq=False: equality by identity, because comparing windows field by field
# would compare their arrays element by element.
@dataclass(frozen=True, eq=False)
class SignalWindow:
    """The samples of one signal for one variant, observed from `start` to `end`.

    `values` is a read-only copy: floats of shape (n,) for a numeric signal,
    booleans of shape (n,) for a rate, and floats of shape (n, dimensions)
    for an embedding. Raises ValueError for another shape, a non-finite
    value, a rate outcome other than 0 or 1, or `end` before `start`.

    An embedding window read from the store contains a sample of its rows in
    `values`, and sets `row_count` and `row_mean` from all of them (see
    `embedding_summary`). Both are None when `values` holds every row.
    """

    signal: Signal
    start: datetime
    end: datetime
    values: np.ndarray
    row_count: int | None = None
    row_mean: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"{self.signal} window ends ({self.end}) before it starts ({self.start})")
        values = _validated_values(self.signal, self.values)
        values.setflags(write=False)
        object.__setattr__(self, "values", values)
        if self.row_count is not None or self.row_mean is not None:
            object.__setattr__(self, "row_mean", self._validated_row_mean())

    @classmethod
    def of_embeddings(cls, signal: Signal, start: datetime, end: datetime, summary: EmbeddingSummary) -> SignalWindow:
        """Build the window of a summary's sample rows, with its count and centroid over every row."""
        return cls(signal, start, end, summary.sample_rows, row_count=summary.count, row_mean=summary.centroid)

    @property
    def sample_count(self) -> int:
        """The number of requests in the window, which for a sampled embedding window exceeds `len(values)`."""
        return self.row_count if self.row_count is not None else len(self.values)

    @property
    def centroid(self) -> np.ndarray:
        """Return the mean row of an embedding window, over every row of the window and not only the sample."""
        return self.row_mean if self.row_mean is not None else self.values.mean(axis=0)

    @property
    def bounds(self) -> WindowBounds:
        return WindowBounds(start=self.start, end=self.end, sample_count=self.sample_count)

    def _validated_row_mean(self) -> np.ndarray:
        if self.signal.kind is not SignalKind.EMBEDDING or self.row_count is None or self.row_mean is None:
            raise ValueError(
                f"{self.signal} window: row_count and row_mean describe a sampled embedding window. "
                "Set both, and only for an embedding signal"
            )
        row_mean = np.asarray(self.row_mean, dtype=np.float64)
        if self.row_count < len(self.values) or row_mean.shape != self.values.shape[1:]:
            raise ValueError(
                f"{self.signal} window: row_count {self.row_count} and row_mean of shape {row_mean.shape} do not fit "
                f"a sample of shape {self.values.shape}. Pass the count and mean of the rows that were sampled"
            )
        row_mean.setflags(write=False)
        return row_mean


@dataclass(frozen=True, eq=False)
class WindowPair:
    """A variant's frozen reference window and current window of one signal, ready to compare."""

    variant: str
    reference: SignalWindow
    current: SignalWindow

    def __post_init__(self) -> None:
        if self.reference.signal is not self.current.signal:
            raise ValueError(
                f"variant {self.variant!r}: reference window is {self.reference.signal} "
                f"but current window is {self.current.signal}. Pair windows of the same signal"
            )
        if self.reference.values.shape[1:] != self.current.values.shape[1:]:
            raise ValueError(
                f"variant {self.variant!r}: {self.signal} rows have shape {self.reference.values.shape[1:]} "
                f"in the reference but {self.current.values.shape[1:]} in the current window. "
                "Embed both windows with the same encoder"
            )

    @property
    def signal(self) -> Signal:
        return self.reference.signal


@dataclass
class _Collector:
    start: datetime
    end: datetime
    batches: list[np.ndarray] = field(default_factory=list)
    # Set instead of `batches` for an embedding signal read from the store as summaries.
    summary: EmbeddingSummary | None = None
    sample_count: int = 0


class DriftWindows:
    """Collects samples per (variant, signal) and hands out reference/current pairs once they are large enough.

    Not thread-safe: one runner task feeds it and takes windows from it.
    """

    def __init__(self, *, reference_min_samples: int, window_min_samples: int) -> None:
        self._reference_min_samples = reference_min_samples
        self._window_min_samples = window_min_samples
        self._references: dict[tuple[str, Signal], SignalWindow] = {}
        self._collectors: dict[tuple[str, Signal], _Collector] = {}

    def add(
        self,
        variant: str,
        signal: Signal,
        values: Iterable[object] | EmbeddingSummary,
        *,
        start: datetime,
        end: datetime,
    ) -> None:
        """Append the samples observed from `start` to `end` to the open window of (variant, signal).

        `values` holds every sample, or for an embedding signal it may be
        the store's summary of them. Batches of one (variant, signal) must
        not overlap in time. Raises ValueError when `start` is before the
        end of the previous batch, because overlapping batches would count
        samples twice, and when one window gets both summaries and rows.
        """
        if isinstance(values, EmbeddingSummary):
            self._add_summary(variant, signal, values, start=start, end=end)
            return
        batch = SignalWindow(signal, start, end, np.asarray(values)).values
        collector = self._open_collector(variant, signal, start, end)
        if collector.summary is not None:
            raise ValueError(
                f"variant {variant!r}, {signal}: rows added to a window of embedding summaries. "
                "Add either rows or summaries to one signal"
            )

        collector.end = end
        if len(batch) == 0:
            return
        if collector.batches and batch.shape[1:] != collector.batches[0].shape[1:]:
            raise ValueError(
                f"variant {variant!r}, {signal}: batch rows have shape {batch.shape[1:]} but earlier rows "
                f"have {collector.batches[0].shape[1:]}. Embed every batch with the same encoder"
            )
        collector.batches.append(batch)
        collector.sample_count += len(batch)

    def freeze_reference(self, variant: str, window: SignalWindow) -> None:
        """Freeze `window` as the reference of (variant, window.signal), for example one loaded from the event store.

        Raises ValueError when that reference is already frozen.
        """
        # NOTE: a reference stays frozen for the life of this object, so after
        # a lasting change that is accepted the alert keeps firing until the
        # runner starts over with a new reference.
        key = (variant, window.signal)
        if key in self._references:
            raise ValueError(f"variant {variant!r}, {window.signal}: the reference window is already frozen")
        self._references[key] = window

    def reference(self, variant: str, signal: Signal) -> SignalWindow | None:
        """Return the frozen reference of (variant, signal), or None while it is still collecting."""
        return self._references.get((variant, signal))

    def take_ready(self) -> list[WindowPair]:
        """Close every window that contains enough samples, and return the pairs to compare, sorted by variant and signal.

        A closed window becomes the reference when its (variant, signal) has
        none yet. Otherwise it is paired with that reference. Windows below
        their minimum keep collecting.
        """
        pairs = []
        for key in sorted(self._collectors):
            window = self._close_if_ready(key)
            if window is None:
                continue
            reference = self._references.get(key)
            if reference is None:
                self._references[key] = window
            else:
                pairs.append(WindowPair(variant=key[0], reference=reference, current=window))
        return pairs

    def _close_if_ready(self, key: tuple[str, Signal]) -> SignalWindow | None:
        collector = self._collectors[key]
        needed = self._window_min_samples if key in self._references else self._reference_min_samples
        if collector.sample_count < needed:
            return None

        del self._collectors[key]
        if collector.summary is not None:
            return SignalWindow.of_embeddings(key[1], collector.start, collector.end, collector.summary)
        values = np.concatenate(collector.batches)
        return SignalWindow(key[1], collector.start, collector.end, values)

    def _add_summary(
        self, variant: str, signal: Signal, summary: EmbeddingSummary, *, start: datetime, end: datetime
    ) -> None:
        if signal.kind is not SignalKind.EMBEDDING:
            raise ValueError(f"variant {variant!r}, {signal}: an embedding summary was added to a {signal.kind} signal")
        if end < start:
            raise ValueError(f"{signal} batch ends ({end}) before it starts ({start})")
        collector = self._open_collector(variant, signal, start, end)
        if collector.batches:
            raise ValueError(
                f"variant {variant!r}, {signal}: an embedding summary added to a window of rows. "
                "Add either rows or summaries to one signal"
            )

        merged = summary if collector.summary is None else collector.summary.merged(summary)
        collector.end = end
        collector.summary = merged
        collector.sample_count = merged.count

    def _open_collector(self, variant: str, signal: Signal, start: datetime, end: datetime) -> _Collector:
        """Return the open collector of (variant, signal), a new one if none is open.

        Raises ValueError when `start` is before the end of the previous batch.
        """
        key = (variant, signal)
        collector = self._collectors.get(key)
        if collector is None:
            return self._collectors.setdefault(key, _Collector(start=start, end=end))
        if start < collector.end:
            raise ValueError(
                f"variant {variant!r}, {signal}: batch starts at {start}, before the previous batch ended "
                f"({collector.end}). Pass each time range once"
            )
        return collector


def _validated_values(signal: Signal, values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    match signal.kind:
        case SignalKind.NUMERIC:
            return _validated_numbers(signal, values, dimensions=1)
        case SignalKind.EMBEDDING:
            return _validated_numbers(signal, values, dimensions=2)
        case SignalKind.RATE:
            return _validated_outcomes(signal, values)


def _validated_numbers(signal: Signal, values: np.ndarray, *, dimensions: int) -> np.ndarray:
    expected = "(n,)" if dimensions == 1 else "(n, dimensions)"
    # An empty batch of embeddings may arrive flat, with shape (0,).
    if values.size == 0 and dimensions == 2 and values.ndim == 1:
        values = values.reshape(0, 0)
    if values.ndim != dimensions or not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"{signal} samples must be numbers of shape {expected}, got {values.dtype} of shape {values.shape}")
    numbers = values.astype(np.float32 if dimensions == 2 else np.float64)
    if not np.all(np.isfinite(numbers)):
        raise ValueError(f"{signal} samples contain NaN or infinite values. Drop or fix those requests")
    return numbers


def _validated_outcomes(signal: Signal, values: np.ndarray) -> np.ndarray:
    if values.ndim != 1:
        raise ValueError(f"{signal} samples must be 0/1 outcomes of shape (n,), got shape {values.shape}")
    if values.dtype != np.bool_ and not np.all((values == 0) | (values == 1)):
        raise ValueError(f"{signal} samples must be 0/1 outcomes, one per request, but other values were found")
    return values.astype(np.bool_)

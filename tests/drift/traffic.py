"""Synthetic traffic for the validation scenarios: real prompts, and drawn values for the other signals."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import numpy as np

from services.drift.alarms import Alert
from services.drift.config import DriftSettings
from services.drift.detector import Detector
from services.drift.windows import DriftWindows
from shared.drift_signals import Signal

T0 = datetime(2025, 1, 1, tzinfo=UTC)
WINDOW_DURATION = timedelta(hours=1)


@dataclass(frozen=True)
class PromptPool:
    """Distinct prompts that traffic draws from, with replacement."""

    chars: np.ndarray
    embeddings: np.ndarray

    @classmethod
    def of(cls, texts: list[str], embeddings: dict[str, np.ndarray]) -> PromptPool:
        return cls(
            chars=np.array([len(text) for text in texts], dtype=np.float64),
            embeddings=np.stack([embeddings[text] for text in texts]),
        )


@dataclass(frozen=True)
class Traffic:
    """The distribution every signal of one window is drawn from."""

    prompts: PromptPool
    output_median_chars: float = 600.0
    refusal_rate: float = 0.05
    block_rate: float = 0.02
    feedback_rate: float = 0.10
    conversion_rate: float = 0.30

    def sample(self, count: int, rng: np.random.Generator) -> dict[Signal, np.ndarray]:
        """Draw `count` requests' values of every signal."""
        prompts = rng.integers(len(self.prompts.chars), size=count)
        return {
            Signal.PROMPT_CHARS: self.prompts.chars[prompts],
            Signal.PROMPT_EMBEDDING: self.prompts.embeddings[prompts],
            Signal.OUTPUT_CHARS: np.round(rng.lognormal(np.log(self.output_median_chars), 0.8, count)),
            # Classifier scores pile up near 0, with a tail towards 1.
            Signal.SCREENING_SCORE: rng.beta(0.5, 10.0, count),
            Signal.MODERATION_SCORE: rng.beta(0.5, 20.0, count),
            Signal.REFUSAL_RATE: rng.random(count) < self.refusal_rate,
            Signal.BLOCK_RATE: rng.random(count) < self.block_rate,
            Signal.FEEDBACK_RATE: rng.random(count) < self.feedback_rate,
            Signal.CONVERSION_RATE: rng.random(count) < self.conversion_rate,
        }

    def with_changes(self, **changes: object) -> Traffic:
        return replace(self, **changes)


def run_windows(
    settings: DriftSettings, reference: Traffic, windows: list[Traffic], *, variants: tuple[str, ...], seed: int
) -> list[list[Alert]]:
    """Freeze a reference drawn from `reference`, then compare one window per entry of `windows`.

    Returns the alerts of each window. Every variant draws from the same
    traffic with its own samples.
    """
    rng = np.random.default_rng(seed)
    drift_windows = DriftWindows(
        reference_min_samples=settings.reference_min_samples, window_min_samples=settings.window_min_samples
    )
    detector = Detector(settings)

    _add(drift_windows, reference, settings.reference_min_samples, variants, 0, rng)
    assert drift_windows.take_ready() == []

    alerts = []
    for index, traffic in enumerate(windows, start=1):
        _add(drift_windows, traffic, settings.window_min_samples, variants, index, rng)
        alerts.append(list(detector.evaluate(drift_windows.take_ready()).alerts))
    return alerts


def _add(
    drift_windows: DriftWindows,
    traffic: Traffic,
    count: int,
    variants: tuple[str, ...],
    index: int,
    rng: np.random.Generator,
) -> None:
    start = T0 + index * WINDOW_DURATION
    for variant in variants:
        for signal, values in traffic.sample(count, rng).items():
            drift_windows.add(variant, signal, values, start=start, end=start + WINDOW_DURATION)

"""Synthetic drift traffic: real labelled prompts, and drawn values for the other signals.

The drift benchmark and the drift validation tests share it. Prompt lengths
and embeddings come from the labelled prompt files in
`../shared/data/prompts`. Output lengths, scanner scores and rates are drawn
from fixed distributions that a scenario can change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from services.drift.config import DriftSettings
from services.drift.detector import Detector, DriftReport
from services.drift.windows import DriftWindows
from shared.drift_signals import Signal
from shared.settings import REPO_ROOT

PROMPTS_DIR = REPO_ROOT.parent / "shared" / "data" / "prompts"
# Everyday requests: the reference traffic of every scenario.
EVERYDAY_FILES = ("mt_bench.jsonl", "self_instruct_user.jsonl")
# Prompt injection attempts, direct and hidden in documents.
INJECTION_FILES = ("deepset_attacks.jsonl", "bipia_text_attacks.jsonl")
# The programming requests among the everyday prompts, by their category field.
CODE_CATEGORIES = frozenset({"coding", "Leetcode", "GeeksforGeeks", "StackOverflow", "Github", "w3schools"})

T0 = datetime(2025, 1, 1, tzinfo=UTC)
WINDOW_DURATION = timedelta(hours=1)


def read_prompt_records(path: Path) -> list[dict[str, object]]:
    """Return the JSON records of one prompt file, one per line. Raises FileNotFoundError when it is missing."""
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def load_prompt_texts(prompts_dir: Path = PROMPTS_DIR) -> dict[str, list[str]]:
    """Return the prompt texts of each traffic kind: everyday, injection and code."""
    everyday = [record for name in EVERYDAY_FILES for record in read_prompt_records(prompts_dir / name)]
    injection = [record for name in INJECTION_FILES for record in read_prompt_records(prompts_dir / name)]
    return {
        "everyday": [str(record["text"]) for record in everyday],
        "injection": [str(record["text"]) for record in injection],
        "code": [str(record["text"]) for record in everyday if record.get("category") in CODE_CATEGORIES],
    }


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


def evaluate_windows(
    settings: DriftSettings, reference: Traffic, windows: list[Traffic], *, variants: tuple[str, ...], seed: int
) -> list[DriftReport]:
    """Freeze a reference drawn from `reference`, then evaluate one window per entry of `windows`.

    Returns the detector's report of each window. Every variant draws from
    the same traffic with its own samples. Raises RuntimeError when the
    reference alone already makes a window ready, which would shift every
    later window by one.
    """
    rng = np.random.default_rng(seed)
    drift_windows = DriftWindows(
        reference_min_samples=settings.reference_min_samples, window_min_samples=settings.window_min_samples
    )
    detector = Detector(settings)

    _add(drift_windows, reference, settings.reference_min_samples, variants, 0, rng)
    if drift_windows.take_ready():
        raise RuntimeError(
            "adding the reference samples also filled a current window, so every later window index would be off by one. "
            "DriftWindows must freeze the first reference_min_samples samples as the reference"
        )

    reports = []
    for index, traffic in enumerate(windows, start=1):
        _add(drift_windows, traffic, settings.window_min_samples, variants, index, rng)
        reports.append(detector.evaluate(drift_windows.take_ready()))
    return reports


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

"""`PromptClassifier`: an offline scanner for prompt injections, jailbreaks and harmful requests.

It runs a cascade over the whole prompt, after `normalize_prompt`:

1. The screen, a multinomial logistic regression on hashed character
   n-grams, gives each class's probability (benign, injection, jailbreak,
   harmful) for every window of `SCREEN_WINDOW_CHARS` and every sentence
   (`screen_chunks`), and the highest
   probability over the windows counts. When its attack probability (one
   minus the benign one) stays below the model's `screen_pass_below`, the
   prompt passes. This takes about a millisecond.
2. Otherwise a linear head on all-MiniLM-L6-v2 embeddings gives the same
   probabilities per encoder window and for the screen's most suspicious
   chunk, and each class's score is the mean of
   the two stages' highest probabilities. On the held-out split the mean
   detected more than either stage alone at the same false-positive rate.

The scan has llm-guard's contract, `scan(prompt) -> (prompt, is_valid,
risk_score)`. It never changes the prompt. The model (weights, settings and
held-out split) is the folder that `python -m
services.modelops.train_prompt_classifier` writes, `shared/models/prompt-classifier/`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.scanning.prompt_encoder import load_prompt_encoder
from shared.scanning.prompt_features import normalize_prompt, screen_chunks, screen_features, screen_vectorizer

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "prompt-classifier"
SETTINGS_FILE = "model.json"
WEIGHTS_FILE = "weights.npz"
SPLIT_FILE = "heldout-sha256.txt"

# llm-guard's risk scores run from -1.0 (no risk) to 1.0.
NO_RISK_SCORE = -1.0


@dataclass(frozen=True)
class ClassifierModel:
    """The trained weights and settings of both stages, as read from a model folder."""

    classes: tuple[str, ...]
    # The encoder's int8 setting that the head was trained with.
    quantized_encoder: bool
    # (classes, 384) and (classes,): the head's logits are head_weights @ embedding + head_bias.
    head_weights: np.ndarray
    head_bias: np.ndarray
    # (classes, SCREEN_FEATURES) and (classes,): the screen's logits over hashed n-grams.
    screen_weights: np.ndarray
    screen_bias: np.ndarray
    # Attack probability of the screen below which a prompt passes without the encoder.
    screen_pass_below: float


def load_classifier_model(model_dir: Path) -> ClassifierModel:
    """Read a model folder; raises `FileNotFoundError` or `ValueError` naming the file when it is missing or malformed."""
    settings = json.loads((model_dir / SETTINGS_FILE).read_text(encoding="utf-8"))
    # allow_pickle=False: the file contains plain arrays, and unpickling could run code.
    with np.load(model_dir / WEIGHTS_FILE, allow_pickle=False) as arrays:
        model = ClassifierModel(
            classes=tuple(settings["classes"]),
            quantized_encoder=bool(settings["quantized_encoder"]),
            head_weights=arrays["head_weights"],
            head_bias=arrays["head_bias"],
            screen_weights=arrays["screen_weights"],
            screen_bias=arrays["screen_bias"],
            screen_pass_below=float(settings["screen_pass_below"]),
        )
    for name in ("head_weights", "screen_weights"):
        rows = getattr(model, name).shape[0]
        if rows != len(model.classes):
            raise ValueError(f"{model_dir / WEIGHTS_FILE}: {name} has {rows} rows for {len(model.classes)} classes in {SETTINGS_FILE}")
    return model


@dataclass(frozen=True)
class Classification:
    """The verdict of the cascade on one prompt, before thresholds."""

    # Each class's score (the mean of both stages), or None when the screen
    # passed the prompt and the encoder did not run.
    class_scores: Mapping[str, float] | None
    # One minus the screen's lowest benign probability over its windows.
    screen_score: float

    def score(self, attack_class: str) -> float:
        """Return the class's probability, or 0.0 when the screen passed the prompt."""
        return 0.0 if self.class_scores is None else self.class_scores[attack_class]


class PromptClassifier:
    """An llm-guard-compatible input scanner that flags a prompt when a class's probability reaches its threshold.

    `thresholds` maps each class to check (injection, jailbreak, harmful)
    to a probability in (0, 1); other classes are not checked. With
    `cascade=False` the encoder reads every prompt. Construction loads the
    encoder once per process (about 3 s); later scanners share it. `scan`
    is thread-safe.
    """

    def __init__(self, *, thresholds: Mapping[str, float], cascade: bool = True, model_dir: Path = DEFAULT_MODEL_DIR) -> None:
        """Raise `ValueError` when a threshold names a class the model lacks or lies outside (0, 1)."""
        self._model = load_classifier_model(model_dir)
        self._thresholds = _checked_thresholds(thresholds, self._model.classes)
        self._cascade = cascade
        self._encoder = load_prompt_encoder(quantized=self._model.quantized_encoder)
        self._vectorizer = screen_vectorizer()
        self._benign_index = self._model.classes.index("benign")

    def scan(self, prompt: str) -> tuple[str, bool, float]:
        """Return the prompt unchanged, whether no checked class reached its threshold, and llm-guard's risk score."""
        classification = self.classify(prompt)
        if classification.class_scores is None:
            return prompt, True, NO_RISK_SCORE

        risk = max(_risk_score(classification.score(name), threshold) for name, threshold in self._thresholds.items())
        return prompt, risk <= 0.0, risk

    def classify(self, prompt: str) -> Classification:
        """Run the cascade on the normalised prompt and return the class probabilities."""
        text = normalize_prompt(prompt)
        chunks = screen_chunks(text)
        screen = self._screen_probabilities(chunks)
        most_suspicious = int(screen[:, self._benign_index].argmin())
        screen_score = 1.0 - float(screen[most_suspicious, self._benign_index])
        if self._cascade and screen_score < self._model.screen_pass_below:
            return Classification(class_scores=None, screen_score=screen_score)

        # The encoder also reads the chunk the screen suspects most, so a
        # sentence that its encoder window dilutes still gets its own verdict.
        encoder = self._encoder_probabilities(text)
        if chunks[most_suspicious] != text:
            encoder = np.concatenate([encoder, self._encoder_probabilities(chunks[most_suspicious])])
        scores = (screen.max(axis=0) + encoder.max(axis=0)) / 2.0
        class_scores = {name: float(scores[index]) for index, name in enumerate(self._model.classes)}
        return Classification(class_scores=class_scores, screen_score=screen_score)

    def _screen_probabilities(self, chunks: list[str]) -> np.ndarray:
        features = screen_features(self._vectorizer, chunks)
        return _softmax(np.asarray(features @ self._model.screen_weights.T) + self._model.screen_bias)

    def _encoder_probabilities(self, text: str) -> np.ndarray:
        embeddings = self._encoder.embed(text)
        return _softmax(embeddings @ self._model.head_weights.T + self._model.head_bias)


def _checked_thresholds(thresholds: Mapping[str, float], classes: tuple[str, ...]) -> dict[str, float]:
    if not thresholds:
        raise ValueError("thresholds is empty; give at least one of injection, jailbreak, harmful")
    for name, threshold in thresholds.items():
        if name not in classes or name == "benign":
            raise ValueError(f"thresholds names class {name!r}, which the model lacks; use injection, jailbreak or harmful")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"thresholds.{name} is {threshold}; use a probability between 0 and 1, both excluded")
    return dict(thresholds)


def _risk_score(score: float, threshold: float) -> float:
    """Map a probability to llm-guard 0.3.16's risk scale: below the threshold -1.0 to 0.0, above it 0.0 to 1.0."""
    if score >= threshold:
        # A score exactly at the threshold is a detection, so it gets a small positive risk.
        return max((score - threshold) / (1.0 - threshold), 1e-6)
    return (score - threshold) / threshold


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)

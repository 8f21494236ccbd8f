"""Held-out metrics of a `PromptClassifier`: detection per attack file, false positives on the benign files, XSTest's safe prompts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from shared.scanning.classifier import PromptClassifier
from shared.scanning.prompt_data import BENIGN, BENIGN_FILES, XSTEST_FILE, LabelledPrompt


@dataclass
class Rate:
    """A count of flagged rows out of all rows."""

    flagged: int = 0
    total: int = 0

    @property
    def value(self) -> float:
        return self.flagged / self.total if self.total else 0.0

    def add(self, flagged: bool) -> None:
        self.flagged += int(flagged)
        self.total += 1

    def __str__(self) -> str:
        return f"{self.value:6.1%} ({self.flagged}/{self.total})"


@dataclass
class Evaluation:
    """Flag rates of one detector (a set of checked classes) on held-out rows."""

    # Attack rows of the detector's classes: the detection rate, overall and per file.
    detection: Rate = field(default_factory=Rate)
    detection_by_file: dict[str, Rate] = field(default_factory=lambda: defaultdict(Rate))
    # Rows of BENIGN_FILES: the false-positive rate.
    false_positives: Rate = field(default_factory=Rate)
    # XSTest's safe prompts.
    xstest_safe: Rate = field(default_factory=Rate)
    # Benign rows (BENIGN_FILES) that the screen passed without running the encoder.
    screen_passed_benign: Rate = field(default_factory=Rate)


def evaluate(classifier: PromptClassifier, prompts: Sequence[LabelledPrompt], classes: Sequence[str]) -> Evaluation:
    """Scan every prompt and count as flagged those where `classifier.scan` finds the prompt invalid.

    The classifier's thresholds decide; `classes` only selects which attack rows count for detection.
    """
    evaluation = Evaluation()
    for prompt in prompts:
        _, valid, _ = classifier.scan(prompt.text)
        flagged = not valid
        if prompt.target in classes:
            evaluation.detection.add(flagged)
            evaluation.detection_by_file[f"{prompt.file}/{prompt.target}"].add(flagged)
        elif prompt.target == BENIGN and prompt.file in BENIGN_FILES:
            evaluation.false_positives.add(flagged)
            evaluation.screen_passed_benign.add(classifier.classify(prompt.text).class_scores is None)
        elif prompt.target == BENIGN and prompt.file == XSTEST_FILE:
            evaluation.xstest_safe.add(flagged)
    return evaluation


def format_evaluation(title: str, evaluation: Evaluation) -> str:
    """Return a few lines that print the evaluation under `title`."""
    lines = [
        f"{title}",
        f"  detection            {evaluation.detection}",
        *(f"    {name:<28} {rate}" for name, rate in sorted(evaluation.detection_by_file.items())),
        f"  false positives      {evaluation.false_positives}  (held-out {', '.join(BENIGN_FILES)})",
        f"  XSTest safe flagged  {evaluation.xstest_safe}",
        f"  benign passed by the screen alone {evaluation.screen_passed_benign}",
    ]
    return "\n".join(lines)

"""Scoring the input scanners of a policy on the labelled prompt files: detection, false positives and latency.

A positive is a prompt labelled injection or harmful (giskard's jailbreaks
included), a negative one labelled benign; `shared.scanning.prompt_data`
reads the files and maps the labels. Each scanner set runs as the safety
service runs it: one chain, in policy order, each scanner reading the text
as the scanners before it sanitized it.

- A scanner detects a prompt when it finds it invalid, whatever its action,
  so a flagging scanner is scored on what it flags. A redacting scanner
  (Secrets, PII) also counts a prompt it redacted as detected.
- The whole chain detects a prompt when it blocks it.

Precision and F1 need both classes, so they are None for a file of one
label; precision is also None when nothing was detected. The "all" rows
pool every file.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.events import LatencyPercentiles, SafetyEvaluatedPayload
from shared.scanning import Policy, build_input_chain
from shared.scanning.prompt_data import BENIGN, LabelledPrompt, load_prompts, read_split

ALL_DATASETS = "all"
WHOLE_CHAIN = "whole chain"
SLUICE_SET = "sluice"
BASELINE_SET = "rule-based baseline"
SPLIT_ALL = "all"
SPLIT_HELD_OUT = "held-out"

# Input scanner types that run a model. The baseline leaves them out, so it
# is llm-guard's rule-based scanners (and Sluice's rule-based Secrets and
# PII detectors) alone.
MODEL_SCANNER_TYPES = frozenset({"PromptClassifier", "PromptInjection", "Toxicity"})


@dataclass(frozen=True)
class ScanRecord:
    """One scanner's verdict on one prompt."""

    dataset: str
    positive: bool
    detected: bool
    duration_ms: float


def select_prompts(folder: Path, split_file: Path | None) -> tuple[list[LabelledPrompt], str]:
    """Return the prompts to scan and the split's name: the held-out rows when `split_file` exists, else every row.

    Raises `FileNotFoundError` when `folder` has no prompt files and
    `ValueError` when a file has an unknown label.
    """
    prompts = load_prompts(folder)
    if split_file is None or not split_file.is_file():
        return prompts, SPLIT_ALL
    held_out = read_split(split_file)
    return [prompt for prompt in prompts if prompt.digest in held_out], SPLIT_HELD_OUT


def baseline_policy(policy: Policy) -> Policy | None:
    """Return `policy` without its model-backed input scanners, or None when it has none (the baseline is the policy itself)."""
    rule_based = tuple(spec for spec in policy.input if spec.type not in MODEL_SCANNER_TYPES)
    if len(rule_based) == len(policy.input):
        return None
    return dataclasses.replace(policy, input=rule_based)


def scan_prompts(policy: Policy, prompts: Sequence[LabelledPrompt]) -> dict[str, list[ScanRecord]]:
    """Run the input chain of `policy` on every prompt; return each scanner's records and the whole chain's.

    Raises `PolicyError` when a scanner cannot be built and `ScannerFailed` when one raises.
    """
    chain = build_input_chain(policy)
    records: dict[str, list[ScanRecord]] = defaultdict(list)
    for prompt in prompts:
        positive = prompt.label != BENIGN
        result = chain.scan(prompt.text)
        for scanner in result.results:
            records[scanner.scanner].append(ScanRecord(prompt.file, positive, not scanner.valid, scanner.duration_ms))
        records[WHOLE_CHAIN].append(ScanRecord(prompt.file, positive, result.blocked, result.duration_ms))
    return dict(records)


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _latency(durations_ms: list[float]) -> LatencyPercentiles:
    p50, p95, p99 = np.percentile(np.asarray(durations_ms), [50.0, 95.0, 99.0])
    return LatencyPercentiles(p50_ms=float(p50), p95_ms=float(p95), p99_ms=float(p99), max_ms=max(durations_ms))


def score(records: Iterable[ScanRecord], *, scanner: str, scanner_set: str, dataset: str, split: str) -> SafetyEvaluatedPayload:
    """Compute the rates and latency of one scanner over `records`; raises `ValueError` when there are none."""
    records = list(records)
    if not records:
        raise ValueError(f"no scans of {scanner} on {dataset} to score")
    positives = sum(record.positive for record in records)
    negatives = len(records) - positives
    true_positives = sum(record.positive and record.detected for record in records)
    false_positives = sum(not record.positive and record.detected for record in records)
    both_classes = positives > 0 and negatives > 0
    precision = _ratio(true_positives, true_positives + false_positives) if both_classes else None
    # 2TP / (2TP + FP + FN) is the harmonic mean of precision and recall, and 0.0 when nothing was detected.
    f1 = _ratio(2 * true_positives, true_positives + positives + false_positives) if both_classes else None
    return SafetyEvaluatedPayload(
        scanner=scanner,
        scanner_set=scanner_set,
        dataset=dataset,
        split=split,
        positives=positives,
        negatives=negatives,
        true_positives=true_positives,
        false_positives=false_positives,
        detection_rate=_ratio(true_positives, positives),
        false_positive_rate=_ratio(false_positives, negatives),
        precision=precision,
        f1=f1,
        latency=_latency([record.duration_ms for record in records]),
    )


def score_all(records: dict[str, list[ScanRecord]], scanner_set: str, split: str) -> list[SafetyEvaluatedPayload]:
    """Score every scanner on every dataset, then on all datasets together; the rows go by dataset, then chain order."""
    datasets = sorted({record.dataset for scans in records.values() for record in scans})
    rows = []
    for dataset in [*datasets, ALL_DATASETS]:
        for scanner, scans in records.items():
            selected = [record for record in scans if dataset in (ALL_DATASETS, record.dataset)]
            rows.append(score(selected, scanner=scanner, scanner_set=scanner_set, dataset=dataset, split=split))
    return rows


def evaluate(policy: Policy, prompts: Sequence[LabelledPrompt], split: str) -> list[SafetyEvaluatedPayload]:
    """Score the policy's input chain and, when the policy has model-backed scanners, the rule-based baseline."""
    rows = score_all(scan_prompts(policy, prompts), SLUICE_SET, split)
    baseline = baseline_policy(policy)
    if baseline is not None:
        rows += score_all(scan_prompts(baseline, prompts), BASELINE_SET, split)
    return rows

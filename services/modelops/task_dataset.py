"""The next-speaker task: a narrow fine-tuning task derived from a play-script corpus, with its metric.

Each example shows the last lines of two consecutive speeches and asks who
speaks next, in a fixed format the base model has never seen:

    GLOUCESTER:
    <last lines of his speech>

    LADY ANNE:
    <last lines of her speech>

    Next speaker:

The completion is the next speaker's name on one line (`GLOUCESTER\\n`). The
base model continues the play instead of answering, so it scores close to
zero. Dialogue mostly alternates, so answering with the first speaker in the
prompt is right for about 59% of the tinyshakespeare speeches, and a small
model can learn that copy in a few minutes of LoRA training.

Each record carries `task`, the name of its metric in
`services.modelops.heldout.METRICS`: the first non-blank line of the output
must equal the name. `held_out.manifest.json` names the same metric for
`sluice model eval`, and `manifest.json` records how the dataset was made.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

TRAIN_FILE = "train.jsonl"
HELD_OUT_FILE = "held_out.jsonl"
MANIFEST_FILE = "manifest.json"
# `sluice model eval` reads the metric from `NAME.manifest.json` beside `NAME.jsonl`.
HELD_OUT_MANIFEST_FILE = "held_out.manifest.json"
TASK_NAME = "next-speaker"
METRIC_NAME = "first_line_exact_match"
ANSWER_PROMPT = "Next speaker:\n"
# Two speeches give the alternation pattern (A, B, then A again) that the task rewards.
CONTEXT_SPEECHES = 2
# The last lines of a speech contain the cue for who answers (a question, a
# name). Two lines keep tinyshakespeare prompts to 59 tokens on average and 105
# at most with the shipped tokenizer, so training steps stay cheap.
LINES_PER_SPEECH = 2
# Consecutive speeches that go to the same split, about one scene, so that a
# held-out example's speeches never appear in a training prompt.
SPLIT_BLOCK_SPEECHES = 100
DEFAULT_HELD_OUT_FRACTION = 0.1
DEFAULT_SEED = 1234
# A tag line longer than this is a line of verse ending in a colon, not a speaker.
MAX_SPEAKER_CHARS = 40


class TaskDatasetError(ValueError):
    """The corpus yields no examples, or an option is out of range; the message names which and what to do."""


@dataclass(frozen=True)
class Speech:
    """One speech of the play script: the speaker's name and the spoken lines."""

    speaker: str
    lines: tuple[str, ...]


@dataclass(frozen=True)
class TaskDatasetSummary:
    """Example counts, held-out baselines and manifest path of a dataset written by `write_task_dataset`."""

    train_examples: int
    held_out_examples: int
    majority_accuracy: float
    first_speaker_accuracy: float
    manifest_path: Path


def parse_speeches(text: str) -> list[Speech | None]:
    """Split a play script into speeches; a block that is not a speech becomes None, so it breaks the dialogue.

    A speech is a block between blank lines whose first line is `NAME:` and
    which has at least one spoken line after it.
    """
    speeches: list[Speech | None] = []
    for block in text.split("\n\n"):
        lines = [line for line in block.strip("\n").split("\n") if line.strip()]
        speeches.append(_speech(lines))
    return speeches


def _speech(lines: list[str]) -> Speech | None:
    if len(lines) < 2 or not lines[0].endswith(":"):
        return None
    speaker = lines[0][:-1].strip()
    if not speaker or len(speaker) > MAX_SPEAKER_CHARS:
        return None
    return Speech(speaker, tuple(lines[1:]))


def make_example(context: Iterable[Speech], answer: Speech) -> dict[str, str]:
    """Build one record: the context speeches' last lines, the question, and the next speaker as completion."""
    parts = [f"{speech.speaker}:\n" + "\n".join(speech.lines[-LINES_PER_SPEECH:]) + "\n" for speech in context]
    prompt = "\n".join(parts) + "\n" + ANSWER_PROMPT
    return {"prompt": prompt, "completion": f"{answer.speaker}\n", "task": METRIC_NAME}


def split_examples(
    speeches: list[Speech | None], held_out_fraction: float, seed: int
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Build every example and split them by blocks of `SPLIT_BLOCK_SPEECHES` speeches, drawn with `seed`.

    An example whose speeches straddle two blocks is dropped, so no speech
    appears in both splits. Returns (train, held-out), each in corpus order.
    """
    block_count = -(-len(speeches) // SPLIT_BLOCK_SPEECHES)
    held_out_blocks = _held_out_blocks(block_count, held_out_fraction, seed)
    train: list[dict[str, str]] = []
    held_out: list[dict[str, str]] = []
    for end in range(CONTEXT_SPEECHES, len(speeches)):
        window = [speech for speech in speeches[end - CONTEXT_SPEECHES : end + 1] if speech is not None]
        first_block, last_block = (end - CONTEXT_SPEECHES) // SPLIT_BLOCK_SPEECHES, end // SPLIT_BLOCK_SPEECHES
        if first_block != last_block or len(window) != CONTEXT_SPEECHES + 1:
            continue
        example = make_example(window[:-1], window[-1])
        (held_out if last_block in held_out_blocks else train).append(example)
    return train, held_out


def _held_out_blocks(block_count: int, held_out_fraction: float, seed: int) -> set[int]:
    count = max(1, round(block_count * held_out_fraction))
    return set(random.Random(seed).sample(range(block_count), count))


def write_task_dataset(
    corpus: Path, out: Path, held_out_fraction: float = DEFAULT_HELD_OUT_FRACTION, seed: int = DEFAULT_SEED
) -> TaskDatasetSummary:
    """Derive the next-speaker dataset from `corpus` and write the two JSONL splits and the manifest into `out`.

    The manifest records the counts, the seed, the corpus SHA-256 as the data
    hash, the metric and two baselines on the held-out split. Existing files of
    the same names are replaced.

    Raises:
        TaskDatasetError: `held_out_fraction` is not between 0 and 1, or either split would be empty.
        OSError: the corpus cannot be read or `out` cannot be written.
    """
    _check_fraction(held_out_fraction)
    raw = corpus.read_bytes()
    train, held_out = split_examples(parse_speeches(raw.decode("utf-8")), held_out_fraction, seed)
    _check_not_empty(corpus, train, held_out)

    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / TRAIN_FILE, train)
    _write_jsonl(out / HELD_OUT_FILE, held_out)
    baselines = _baselines(train, held_out)
    manifest = _manifest(corpus, hashlib.sha256(raw).hexdigest(), held_out_fraction, seed, train, held_out)
    manifest["held_out_baselines"] = baselines
    _write_json(out / MANIFEST_FILE, manifest)
    _write_json(out / HELD_OUT_MANIFEST_FILE, {"name": TASK_NAME, "metric": METRIC_NAME})
    return TaskDatasetSummary(
        len(train), len(held_out), baselines["majority_answer"], baselines["first_speaker_in_prompt"], out / MANIFEST_FILE
    )


def _check_fraction(held_out_fraction: float) -> None:
    if not 0 < held_out_fraction < 1:
        raise TaskDatasetError(
            f"held-out fraction {held_out_fraction} is out of range: pass a number between 0 and 1, such as 0.1"
        )


def _check_not_empty(corpus: Path, train: list[dict[str, str]], held_out: list[dict[str, str]]) -> None:
    if not train or not held_out:
        raise TaskDatasetError(
            f"{corpus} gave {len(train)} training and {len(held_out)} held-out examples: the corpus must be a play "
            f"script of speeches (`NAME:` then lines, speeches separated by blank lines), with at least "
            f"{2 * SPLIT_BLOCK_SPEECHES} speeches so that both splits get a block"
        )


def _write_jsonl(path: Path, records: list[dict[str, str]]) -> None:
    lines = (json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    path.write_text("".join(lines), encoding="utf-8")


def _write_json(path: Path, value: dict[str, object]) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def _baselines(train: list[dict[str, str]], held_out: list[dict[str, str]]) -> dict[str, float]:
    # What a model gets without reading the dialogue (always the most common
    # training answer), and with the alternation rule alone (the first speaker shown).
    majority = Counter(example["completion"] for example in train).most_common(1)[0][0]
    first_speaker = [example["prompt"].split(":\n", 1)[0] + "\n" == example["completion"] for example in held_out]
    return {
        "majority_answer": sum(example["completion"] == majority for example in held_out) / len(held_out),
        "first_speaker_in_prompt": sum(first_speaker) / len(held_out),
    }


def _manifest(
    corpus: Path,
    corpus_sha256: str,
    held_out_fraction: float,
    seed: int,
    train: list[dict[str, str]],
    held_out: list[dict[str, str]],
) -> dict[str, object]:
    # A byte-level BPE tokenizer, such as the shipped one, spends at most one
    # token per byte, so this many new tokens always fit the longest answer line.
    max_new_tokens = max(len(example["completion"].encode("utf-8")) for example in train + held_out)
    return {
        "task": METRIC_NAME,
        "task_name": TASK_NAME,
        "description": "Who speaks next, given the last lines of the two speeches before; answer the name on one line.",
        "max_new_tokens": max_new_tokens,
        "files": {"train": TRAIN_FILE, "held_out": HELD_OUT_FILE},
        "counts": {"train": len(train), "held_out": len(held_out)},
        "seed": seed,
        "held_out_fraction": held_out_fraction,
        "split_block_speeches": SPLIT_BLOCK_SPEECHES,
        "corpus": {"file": corpus.name, "sha256": corpus_sha256},
        "data_hash": f"sha256:{corpus_sha256}",
    }

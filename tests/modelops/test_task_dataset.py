"""The next-speaker task: parsing a play script, the prompt format, the seeded split and the manifest."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from services.modelops.heldout import METRICS, load_heldout
from services.modelops.task_dataset import (
    HELD_OUT_FILE,
    MANIFEST_FILE,
    METRIC_NAME,
    SPLIT_BLOCK_SPEECHES,
    TRAIN_FILE,
    Speech,
    TaskDatasetError,
    make_example,
    parse_speeches,
    split_examples,
    write_task_dataset,
)
from shared.settings import REPO_ROOT

CORPUS = REPO_ROOT.parent / "shared" / "data" / "corpus" / "tinyshakespeare.txt"
SPEAKERS = ("ROMEO", "JULIET", "NURSE")


def write_script(path: Path, speeches: int) -> Path:
    """Write a play script in which ROMEO and JULIET alternate and the NURSE speaks every fifth speech."""
    blocks = []
    for index in range(speeches):
        speaker = SPEAKERS[2] if index % 5 == 4 else SPEAKERS[index % 2]
        blocks.append(f"{speaker}:\nLine {index}, first.\nLine {index}, second.\nLine {index}, third.\n")
    path.write_text("\n".join(blocks), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_parse_marks_non_speeches() -> None:
    text = "ROMEO:\nBut soft.\nWhat light?\n\nStage direction\n\nKING RICHARD III:\nNow is the winter.\n\nTITUS:\n"

    speeches = parse_speeches(text)

    assert speeches == [
        Speech("ROMEO", ("But soft.", "What light?")),
        None,
        Speech("KING RICHARD III", ("Now is the winter.",)),
        None,
    ]


def test_example_format() -> None:
    context = [Speech("GLOUCESTER", ("One.", "Two.", "Three.")), Speech("LADY ANNE", ("Four.",))]

    example = make_example(context, Speech("GLOUCESTER", ("Five.",)))

    assert example == {
        "prompt": "GLOUCESTER:\nTwo.\nThree.\n\nLADY ANNE:\nFour.\n\nNext speaker:\n",
        "completion": "GLOUCESTER\n",
        "task": METRIC_NAME,
    }


def test_metric_known_to_eval() -> None:
    assert METRIC_NAME in METRICS
    assert METRICS[METRIC_NAME]("GLOUCESTER\nMy lord.\n", "GLOUCESTER\n")
    assert not METRICS[METRIC_NAME]("GLOUCESTER, DUKE\n", "GLOUCESTER\n")


def test_non_speech_breaks_examples() -> None:
    speeches = parse_speeches("A:\none\n\nB:\ntwo\n\nA:\nthree\n\nnoise\n\nB:\nfour\n\nA:\nfive\n\nB:\nsix\n")

    train, held_out = split_examples(speeches, held_out_fraction=0.5, seed=0)

    # Windows of three speeches that skip the noise block: (A, B, A) and (B, A, B) after it.
    assert sorted(example["completion"] for example in train + held_out) == ["A\n", "B\n"]


def test_split_is_seeded(tmp_path: Path) -> None:
    speeches = parse_speeches(write_script(tmp_path / "play.txt", speeches=1000).read_text())

    first = split_examples(speeches, 0.2, seed=7)
    again = split_examples(speeches, 0.2, seed=7)
    other = split_examples(speeches, 0.2, seed=8)

    assert first == again
    assert first != other


def test_split_keeps_speeches_apart(tmp_path: Path) -> None:
    speeches = parse_speeches(write_script(tmp_path / "play.txt", speeches=1000).read_text())

    train, held_out = split_examples(speeches, 0.2, seed=7)

    def lines(examples: list[dict[str, str]]) -> set[str]:
        return {line for example in examples for line in example["prompt"].splitlines() if line.startswith("Line")}

    assert not lines(train) & lines(held_out)
    # 10 blocks of 100 speeches, 2 held out; each block loses its first two speeches' windows.
    assert len(held_out) == 2 * (SPLIT_BLOCK_SPEECHES - 2)
    assert len(train) == 8 * (SPLIT_BLOCK_SPEECHES - 2)


def test_writes_splits_and_manifest(tmp_path: Path) -> None:
    corpus = write_script(tmp_path / "play.txt", speeches=1000)

    summary = write_task_dataset(corpus, tmp_path / "task", held_out_fraction=0.2, seed=7)

    manifest = json.loads((tmp_path / "task" / MANIFEST_FILE).read_text())
    assert manifest["counts"] == {"train": summary.train_examples, "held_out": summary.held_out_examples}
    assert manifest["seed"] == 7
    assert manifest["data_hash"] == "sha256:" + hashlib.sha256(corpus.read_bytes()).hexdigest()
    assert manifest["task"] == METRIC_NAME
    assert manifest["max_new_tokens"] == len("JULIET\n")
    assert len(read_jsonl(tmp_path / "task" / TRAIN_FILE)) == summary.train_examples
    assert len(read_jsonl(tmp_path / "task" / HELD_OUT_FILE)) == summary.held_out_examples


def test_baselines_match_script(tmp_path: Path) -> None:
    corpus = write_script(tmp_path / "play.txt", speeches=1000)

    summary = write_task_dataset(corpus, tmp_path / "task", held_out_fraction=0.2, seed=7)

    train, held_out = read_jsonl(tmp_path / "task" / TRAIN_FILE), read_jsonl(tmp_path / "task" / HELD_OUT_FILE)
    majority = Counter(example["completion"] for example in train).most_common(1)[0][0]
    assert summary.majority_accuracy == pytest.approx(sum(e["completion"] == majority for e in held_out) / len(held_out))
    # The speaker two back speaks next unless the NURSE breaks the alternation.
    assert 0.5 < summary.first_speaker_accuracy < 0.7


def test_eval_reads_held_out_metric(tmp_path: Path) -> None:
    write_task_dataset(write_script(tmp_path / "play.txt", speeches=1000), tmp_path / "task", 0.2, 7)

    held_out = load_heldout(tmp_path / "task" / HELD_OUT_FILE)

    assert held_out.metric == METRIC_NAME
    assert held_out.name == "next-speaker"


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_bad_fraction_rejected(tmp_path: Path, fraction: float) -> None:
    with pytest.raises(TaskDatasetError, match=f"held-out fraction {fraction} is out of range"):
        write_task_dataset(write_script(tmp_path / "play.txt", speeches=1000), tmp_path / "task", fraction)

    assert not (tmp_path / "task").exists()


def test_prose_corpus_rejected(tmp_path: Path) -> None:
    corpus = tmp_path / "prose.txt"
    corpus.write_text("It was a dark and stormy night.\n\nThe rain fell.\n")

    with pytest.raises(TaskDatasetError, match="gave 0 training and 0 held-out examples"):
        write_task_dataset(corpus, tmp_path / "task")


@pytest.mark.skipif(not CORPUS.is_file(), reason="the tinyshakespeare corpus is not in ../shared/data/corpus")
def test_tinyshakespeare_counts(tmp_path: Path) -> None:
    summary = write_task_dataset(CORPUS, tmp_path / "task")

    assert (summary.train_examples, summary.held_out_examples) == (6085, 675)
    assert summary.first_speaker_accuracy == pytest.approx(410 / 675)

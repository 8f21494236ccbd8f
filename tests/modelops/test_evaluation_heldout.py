"""Reading a held-out set and its manifest, and the task metrics that score outputs against it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from services.modelops.heldout import (
    DEFAULT_METRIC,
    HeldOutDataError,
    exact_match,
    first_line_exact_match,
    load_heldout,
    manifest_path,
    normalise,
    prefix_match,
)


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_loads_examples_name_and_digest(tmp_path: Path) -> None:
    dataset = _write(tmp_path / "romeo.jsonl", [{"prompt": "ROMEO:\n", "completion": "Ay me.\n"}, {"prompt": "A", "completion": "b"}])

    heldout = load_heldout(dataset)

    assert heldout.name == "romeo"
    assert heldout.metric == DEFAULT_METRIC
    assert heldout.sha256 == hashlib.sha256(dataset.read_bytes()).hexdigest()
    assert [example.completion for example in heldout.examples] == ["Ay me.\n", "b"]


def test_max_examples_keeps_first(tmp_path: Path) -> None:
    dataset = _write(tmp_path / "set.jsonl", [{"prompt": str(i), "completion": "x"} for i in range(5)])

    heldout = load_heldout(dataset, max_examples=2)

    assert [example.prompt for example in heldout.examples] == ["0", "1"]


def test_manifest_names_set_and_metric(tmp_path: Path) -> None:
    dataset = _write(tmp_path / "set.jsonl", [{"prompt": "A", "completion": "b"}])
    manifest_path(dataset).write_text(json.dumps({"name": "romeo-lines", "metric": "prefix_match"}))

    heldout = load_heldout(dataset)

    assert (heldout.name, heldout.metric) == ("romeo-lines", "prefix_match")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "A"}', "'completion' is missing"),
        ('{"prompt": 3, "completion": "b"}', "'prompt' is missing or not a string"),
        ('["A", "b"]', "is a JSON list"),
        ("{not json", "is not valid JSON"),
        ('{"prompt": "A", "completion": "  "}', "the completion is empty"),
    ],
)
def test_invalid_line_named(tmp_path: Path, line: str, message: str) -> None:
    dataset = tmp_path / "set.jsonl"
    dataset.write_text('{"prompt": "A", "completion": "b"}\n' + line + "\n")

    with pytest.raises(HeldOutDataError, match="line 2") as caught:
        load_heldout(dataset)

    assert message in str(caught.value)


def test_empty_file_rejected(tmp_path: Path) -> None:
    dataset = tmp_path / "set.jsonl"
    dataset.write_text("\n")

    with pytest.raises(HeldOutDataError, match="contains no example"):
        load_heldout(dataset)


def test_missing_file_rejected(tmp_path: Path) -> None:
    with pytest.raises(HeldOutDataError, match="cannot read the held-out file"):
        load_heldout(tmp_path / "absent.jsonl")


def test_unknown_metric_rejected(tmp_path: Path) -> None:
    dataset = _write(tmp_path / "set.jsonl", [{"prompt": "A", "completion": "b"}])
    manifest_path(dataset).write_text(json.dumps({"metric": "bleu"}))

    with pytest.raises(HeldOutDataError, match="'bleu'"):
        load_heldout(dataset)


def test_normalise_collapses_whitespace() -> None:
    assert normalise("  Once more\t unto\n the breach ") == "Once more unto the breach"


@pytest.mark.parametrize(
    ("metric", "output", "reference", "expected"),
    [
        (exact_match, " Ay  me.\n", "Ay me.", True),
        (exact_match, "Ay me. Ay me.", "Ay me.", False),
        (first_line_exact_match, "\nAy me.\nROMEO: speak", "Ay me.\n", True),
        (first_line_exact_match, "Ay me, alas.\n", "Ay me.\n", False),
        (prefix_match, "Ay me. She speaks", "Ay  me.", True),
        (prefix_match, "She speaks", "Ay me.", False),
    ],
)
def test_metric_cases(metric, output: str, reference: str, expected: bool) -> None:
    assert metric(output, reference) is expected

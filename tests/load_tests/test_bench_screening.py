"""Building the screening benchmark's texts from prompt files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from load_tests import bench_screening
from load_tests.bench_screening import PROMPT_FILES, load_benign_texts, texts_of_length


def test_texts_have_exact_length() -> None:
    texts = texts_of_length(["short one", "a somewhat longer prompt", "third"], chars=50, count=4)

    assert [len(text) for text in texts] == [50, 50, 50, 50]


def test_texts_start_at_successive_prompts() -> None:
    texts = texts_of_length(["alpha " * 10, "beta " * 10, "gamma " * 10], chars=20, count=3)

    assert [text.split()[0] for text in texts] == ["alpha", "beta", "gamma"]


def test_no_prompts_rejected() -> None:
    with pytest.raises(ValueError, match="no prompt texts"):
        texts_of_length([], chars=200, count=1)


def test_loads_only_benign_texts(tmp_path: Path) -> None:
    records = [{"text": "kind", "label": "benign"}, {"text": "rude", "label": "attack"}]
    for name in PROMPT_FILES:
        (tmp_path / name).write_text("\n".join(json.dumps(record) for record in records) + "\n")

    assert load_benign_texts(tmp_path) == ["kind"] * len(PROMPT_FILES)


def test_missing_prompt_folder_skips(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(bench_screening, "PROMPTS_DIR", tmp_path / "missing")

    section = bench_screening.run(quick=True)

    assert section.rows == []
    assert section.notes[0].startswith("Skipped: the prompt folder")

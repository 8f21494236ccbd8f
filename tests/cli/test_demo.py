"""Reading prompt files and folding client-side outcomes into a summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.cli.demo import Outcome, PromptFileError, load_prompts, summarize


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_load_prompts_honours_limit(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"text": f"prompt {i}"}) for i in range(5)])
    assert load_prompts(path, limit=2) == ["prompt 0", "prompt 1"]


def test_load_prompts_skips_blank_lines(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"text": "a"}), "", json.dumps({"text": "b"})])
    assert load_prompts(path, limit=None) == ["a", "b"]


def test_load_prompts_names_bad_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"text": "a"}), "{not json"])
    with pytest.raises(PromptFileError, match=r"p\.jsonl:2"):
        load_prompts(path, limit=None)


def test_load_prompts_requires_text_field(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"prompt": "a"})])
    with pytest.raises(PromptFileError, match='"text"'):
        load_prompts(path, limit=None)


def test_load_prompts_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PromptFileError, match="not found"):
        load_prompts(tmp_path / "absent.jsonl", limit=None)


def test_summarize_counts_outcomes() -> None:
    outcomes = [
        Outcome("completed", ttft_ms=10.0, total_ms=100.0),
        Outcome("completed", ttft_ms=30.0, total_ms=300.0),
        Outcome("blocked", blocked_by="Secrets", total_ms=5.0),
        Outcome("blocked", blocked_by="Secrets", total_ms=6.0),
        Outcome("failed", error_code="backend_rejected", total_ms=50.0),
    ]

    summary = summarize(outcomes)

    assert (summary.requests, summary.completed, summary.failed) == (5, 2, 1)
    assert summary.blocked_by == {"Secrets": 2}
    assert summary.failed_by == {"backend_rejected": 1}
    assert summary.ttft.p50_ms == 20.0
    assert summary.total_latency.p50_ms == 200.0
    assert summary.total_latency.samples == 2

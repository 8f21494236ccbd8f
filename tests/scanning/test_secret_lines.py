"""The lines detect-secrets scans for a prompt, and the config parses that PromptLines skips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.scanning.secret_lines import PromptLines, transformers_are_config_only
from shared.scanning.secret_plugins import PROMPT_FILENAME
from shared.settings import REPO_ROOT

PROMPTS_DIR = REPO_ROOT.parent / "shared" / "data" / "prompts"

CONFIG_LIKE = {
    "section first": "[database]\nhost = db.internal\npassword = hunter2\n",
    "section after a comment": "# settings\n; more\n[db]\nuser: admin\n",
    "section after prose": "Here is my file:\n[db]\nuser = admin\n",
    "key-value lines": "api_secret: abc\ntimeout = 30\n",
    "continuation line": "client_secret:\n    abcdef\n",
    "indented prose": "key: value\n  and some indented words\n",
    "prose with a colon": "Note: this is prose\nwithout any delimiter here\n",
    "bracket in prose": "Use list[0] to read it\nand nothing else\n",
    "duplicate section": "[a]\nx = 1\n[a]\ny = 2\n",
    "duplicate key": "x = 1\nx = 2\n",
    "interpolation": "path = %(home)s/bin\n",
    "only comments": "# one\n; two\n",
    "empty line in value": "key = first\n\n    second\n",
    "windows line endings": "[s]\r\nkey = value\r\nplain words\r\n",
    "line separator": "key = value\u2028more words\n",
}


def _prompts() -> list[str]:
    prompts = list(CONFIG_LIKE.values())
    for path in sorted(PROMPTS_DIR.glob("*.jsonl")) if PROMPTS_DIR.is_dir() else []:
        with path.open(encoding="utf-8") as lines:
            prompts += [json.loads(line)["text"] for line in lines if line.strip()]
    return prompts


def test_prompt_filename_has_config_transformers_only() -> None:
    assert transformers_are_config_only(PROMPT_FILENAME)


def test_text_mode_line_endings() -> None:
    lines = PromptLines("a\r\nb\rc\nd", PROMPT_FILENAME, skip_failing_parses=True)

    assert lines.raw_lines == ["a\n", "b\n", "c\n", "d"]
    assert lines.content == "a\nb\nc\nd"


@pytest.mark.parametrize("prompt", CONFIG_LIKE.values(), ids=CONFIG_LIKE.keys())
def test_config_like_passes_unchanged(prompt: str) -> None:
    skipping = list(PromptLines(prompt, PROMPT_FILENAME, skip_failing_parses=True).passes())
    parsing = list(PromptLines(prompt, PROMPT_FILENAME, skip_failing_parses=False).passes())

    assert skipping == parsing


def test_prompt_file_passes_unchanged() -> None:
    # Every prompt of the labelled prompt files, when present, must give the same passes either way.
    for prompt in _prompts():
        skipping = list(PromptLines(prompt, PROMPT_FILENAME, skip_failing_parses=True).passes())
        parsing = list(PromptLines(prompt, PROMPT_FILENAME, skip_failing_parses=False).passes())

        assert skipping == parsing, prompt


def test_transformed_lines_used_for_sections() -> None:
    passes = list(PromptLines(CONFIG_LIKE["section first"], PROMPT_FILENAME, skip_failing_parses=True).passes())

    assert passes[0] == ["", 'host = "db.internal"', 'password = "hunter2"']


def test_eager_pass_follows() -> None:
    passes = list(PromptLines(CONFIG_LIKE["continuation line"], PROMPT_FILENAME, skip_failing_parses=True).passes())

    assert passes == [["client_secret:\n", "    abcdef\n"], ["", 'client_secret = "abcdef"']]

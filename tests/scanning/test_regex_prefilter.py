"""Prefilters for regular expressions: required literals, case folding and the joined-lines pattern."""

from __future__ import annotations

import re
import string
import sys

import pytest

from shared.scanning.regex_prefilter import fold_case, joined_lines_pattern, required_literals
from shared.scanning.secrets import load_llm_guard_detectors
from tests.scanning.secret_examples import example_for


@pytest.mark.parametrize(
    ("pattern", "literals"),
    [
        (r"AKIA[0-9A-Z]{16}", {"akia"}),
        (r"(?i)(?:adafruit)[a-z]{0,20}=([a-z0-9]{32})", {"adafruit"}),
        (r"(?:ghp|gho|ghu)_[A-Za-z0-9]{36}", {"ghp_", "gho_", "ghu_"}),
        (r"x(?:abc)+y", {"abc"}),
        (r"['\"]\w+['\"]", {"'", '"'}),
        (r"key(?:_|-|)id", {"key_id", "key-id", "keyid"}),
    ],
)
def test_required_literals_found(pattern: str, literals: set[str]) -> None:
    assert required_literals(re.compile(pattern)) == literals


@pytest.mark.parametrize("pattern", [r"[a-z]{32}", r"(?:ab|)c?", r"\d+", r"(?:x|[0-9])+", "é+"])
def test_no_literal_known(pattern: str) -> None:
    assert required_literals(re.compile(pattern)) is None


def test_fold_case_maps_ignorecase_twins() -> None:
    # Every character that re.IGNORECASE matches to an ASCII letter must fold to that letter.
    every_char = "".join(chr(code) for code in range(sys.maxunicode + 1) if not 0xD800 <= code <= 0xDFFF)
    for letter in string.ascii_lowercase:
        twins = re.findall(letter, every_char, flags=re.IGNORECASE)

        assert {fold_case(twin) for twin in twins} == {letter}


def test_fold_case_keeps_line_count() -> None:
    text = "İstanbul\nKELVIN\nſtraße"

    assert fold_case(text).split("\n") == ["istanbul", "kelvin", "straße"]


@pytest.mark.parametrize("pattern", [r"\Aabc", r"abc\Z", r"abc(?!d)", r"(?<!x)abc"])
def test_joined_pattern_refused(pattern: str) -> None:
    assert joined_lines_pattern(re.compile(pattern)) is None


def test_joined_pattern_anchors_each_line() -> None:
    pattern = joined_lines_pattern(re.compile(r"^key=(\w+)$"))

    assert pattern is not None
    assert pattern.search("first line\nkey=value\nlast line")


def test_prefilters_hold_for_every_plugin_pattern() -> None:
    # For each pattern of llm-guard's plugins, a generated match must pass both prefilters.
    plugins, _ = load_llm_guard_detectors()
    checked = 0
    for plugin in plugins:
        for index, pattern in enumerate(getattr(plugin, "denylist", [])):
            example = f"before\n{example_for(pattern, seed=index)}\nafter"
            literals = required_literals(pattern)
            joined = joined_lines_pattern(pattern)

            assert literals is None or any(literal in fold_case(example) for literal in literals), pattern.pattern
            assert joined is None or joined.search(example), pattern.pattern
            checked += 1

    assert checked > 150

"""Where the end of a growing text could begin a banned match."""

from __future__ import annotations

import pytest

from shared.scanning.partial_match import patterns_tail_start, substrings_tail_start


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, wor", 10),
        ("Hello, DA", 7),
        ("Hello, dan mode", 7),
        ("Hello, DAN Mode enabled", 7),
        ("xyz", 0),
        ("", 0),
    ],
)
def test_substrings_tail_start(text: str, expected: int) -> None:
    tail_start = substrings_tail_start(["DAN Mode enabled", "xyzzy"], case_sensitive=False)

    assert tail_start(text) == expected


def test_case_sensitive_substrings_ignore_other_case() -> None:
    tail_start = substrings_tail_start(["DAN Mode enabled"], case_sensitive=True)

    assert tail_start("Hello, dan") == len("Hello, dan")
    assert tail_start("Hello, DAN") == len("Hello, ")


def test_substrings_escape_pattern_characters() -> None:
    tail_start = substrings_tail_start(["a.b*"], case_sensitive=True)

    assert tail_start("xxa.") == 2
    assert tail_start("xxab") == 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The id is AKIA12", 10),
        ("The id is AKIA", 10),
        ("The id is xAKIA", 15),
        ("The id is AKIA" + "1" * 30, 44),
        ("the end of a PRIV", 13),
        ("no key here", 11),
    ],
)
def test_patterns_tail_start(text: str, expected: int) -> None:
    tail_start = patterns_tail_start([r"\bAKIA[0-9A-Z]{16}\b", "PRIVATE KEY-----"])

    assert tail_start is not None
    assert tail_start(text) == expected


def test_uncompilable_pattern_gives_none() -> None:
    assert patterns_tail_start(["(?P<name"]) is None

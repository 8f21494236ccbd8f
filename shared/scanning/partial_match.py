"""Finding where the end of a text could begin a match, so streaming output is held back no further than that.

Moderation holds back the end of the output that a banned string or
pattern could still reach once more text arrives. Holding a fixed number
of characters (the longest match) delays the first text a client sees by
that many characters. A partial match shows exactly which end could still
become a match: "Hello, DA" could grow into "DAN Mode enabled", while
"Hello, wor" could not grow into any banned string, so all of it can go.

The `regex` package (a superset of the standard `re` syntax) reports
partial matches: with `partial=True`, a search also matches text that
runs out while the pattern still fits it. The earliest such start is
where the held tail begins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import regex

# Returns where the end of a text could begin a match: the start of the
# earliest partial match that runs to the end, or len(text) when none can.
TailStart = Callable[[str], int]


def substrings_tail_start(substrings: Sequence[str], *, case_sensitive: bool) -> TailStart:
    """Return the `TailStart` of a list of banned substrings, ignoring case unless `case_sensitive`.

    Word-boundary matching (llm-guard's `match_type="word"`) holds the
    same tails: a word-bounded match is also a substring match, so this can
    hold more than needed, never less.
    """
    flags = 0 if case_sensitive else regex.IGNORECASE
    alternatives = "|".join(regex.escape(substring) for substring in substrings)
    return _tail_start_of(regex.compile(alternatives, flags))


def patterns_tail_start(patterns: Sequence[str]) -> TailStart | None:
    """Return the `TailStart` of banned regular expressions, or None when one does not compile under `regex`.

    Python's `re` syntax compiles the same under `regex` except for rare
    cases (such as nested sets with `[[`). Where it does not, the caller
    holds a fixed number of characters instead.
    """
    try:
        compiled = [regex.compile(pattern) for pattern in patterns]
    except regex.error:
        return None

    def tail_start(text: str) -> int:
        return min((_partial_start(pattern, text) for pattern in compiled), default=len(text))

    return tail_start


def _tail_start_of(pattern: regex.Pattern[str]) -> TailStart:
    def tail_start(text: str) -> int:
        return _partial_start(pattern, text)

    return tail_start


def _partial_start(pattern: regex.Pattern[str], text: str) -> int:
    # The search scans start positions from the left, so the first match
    # (whole or partial) starts the earliest tail that could still match. A
    # whole match also holds from its start, so the text stays unreleased
    # while the scanner's verdict blocks it.
    found = pattern.search(text, partial=True)
    return len(text) if found is None else found.start()

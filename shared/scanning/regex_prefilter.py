"""Cheap tests that rule a regular expression out before it runs on each line of a text.

- `required_literals(pattern)` returns lowercase ASCII strings such that
  every match of `pattern` contains at least one of them, ignoring case.
  When none of them occurs in `fold_case(text)`, the pattern cannot match
  anywhere in `text`. A substring test costs far less than running a
  case-insensitive pattern.
- `joined_lines_pattern(pattern)` returns a pattern that, searched once over
  lines joined by newlines, finds a match whenever `pattern` would find one
  in any of the lines.

Both read the parse tree that `re.compile` itself builds (`re._parser`, the
module that was `sre_parse` before Python 3.11). That module is private, so
a node type this module does not know, or any error while reading the tree,
gives `None`. The caller then runs the pattern on every line: slower, never
wrong.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

try:
    from re import _constants as sre_constants  # type: ignore[attr-defined]
    from re import _parser as sre_parser  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - only on a Python whose re has another layout
    sre_constants = None
    sre_parser = None

# Under re.IGNORECASE these non-ASCII letters match ASCII letters, and
# `str.lower` does not map them to those letters ("ı".lower() is "ı", and
# "İ".lower() is two characters). Python's `re` documentation lists exactly
# these four for the ASCII letters.
_IGNORECASE_ASCII_TWINS = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})

Literals = frozenset[str]

# A run of adjacent fixed texts, such as "gh" followed by [pou] and "_",
# stays a set of whole strings ("ghp_", "gho_", "ghu_") while it has at most
# this many. Longer strings occur in fewer texts; more of them cost more
# substring searches.
MAX_RUN_VARIANTS = 16
_EMPTY_RUN: frozenset[str] = frozenset({""})


def fold_case(text: str) -> str:
    """Lowercase `text` so that it contains a required literal whenever a pattern could match in it.

    Every character that matches an ASCII letter under re.IGNORECASE becomes
    that letter in lowercase. Other characters keep their `str.lower` form.
    """
    return text.translate(_IGNORECASE_ASCII_TWINS).lower()


def required_literals(pattern: re.Pattern[str]) -> Literals | None:
    """Return lowercase ASCII strings, one of which every match of `pattern` contains; None when none is known.

    Among the candidates (a run of literal characters, or the alternatives of
    a group that must match), the set whose shortest string is longest wins,
    because a longer string occurs in fewer texts.
    """
    if sre_parser is None or not isinstance(pattern.pattern, str):
        return None
    try:
        literals = _sequence_literals(sre_parser.parse(pattern.pattern, pattern.flags))
    # The parse tree is private to `re`: a shape this code does not expect
    # means no literal is known, never a wrong one.
    except (TypeError, ValueError, AttributeError, IndexError):
        return None
    return None if literals is None else _without_superstrings(literals)


def joined_lines_pattern(pattern: re.Pattern[str]) -> re.Pattern[str] | None:
    """Return `pattern` with `^` and `$` matching at every line, for one search over lines joined by "\\n".

    A match inside one line is still a match there: the joined text has the
    same characters, "\\n" is a non-word character as a line's edge is for
    `\\b`, and `^`, `$` and positive lookarounds hold at a line's edges as
    before. A match may also span lines, which only makes the test pass more
    often. Returns None for patterns with `\\A`, `\\Z` or a negative
    lookaround, where "\\n" instead of a line's edge could turn a match into
    none.
    """
    if sre_parser is None or not isinstance(pattern.pattern, str):
        return None
    try:
        if _has_edge_sensitive_node(sre_parser.parse(pattern.pattern, pattern.flags)):
            return None
    except (TypeError, ValueError, AttributeError, IndexError):
        return None
    return re.compile(pattern.pattern, pattern.flags | re.MULTILINE)


def _has_edge_sensitive_node(items: Iterable[tuple[Any, Any]]) -> bool:
    string_edges = (sre_constants.AT_BEGINNING_STRING, sre_constants.AT_END_STRING)
    for op, argument in items:
        if op is sre_constants.ASSERT_NOT:
            return True
        if op is sre_constants.AT and argument in string_edges:
            return True
        if any(_has_edge_sensitive_node(inner) for inner in _inner_sequences(argument)):
            return True
    return False


def _inner_sequences(argument: Any) -> Iterator[Any]:
    """Yield the nested node sequences of a node's argument (groups, alternatives, repeated parts)."""
    if isinstance(argument, sre_parser.SubPattern):
        yield argument
    elif isinstance(argument, (list, tuple)):
        for part in argument:
            yield from _inner_sequences(part)


def _sequence_literals(items: Iterable[tuple[Any, Any]]) -> Literals | None:
    """Return the best literals of a node sequence: a run of adjacent fixed texts, or one node's literals."""
    best: Literals | None = None
    run: Literals = _EMPTY_RUN
    for op, argument in items:
        variants = _fixed_variants(op, argument)
        if variants is None:
            best = _better(_better(best, run), _item_literals(op, argument))
            run = _EMPTY_RUN
        elif len(run) * len(variants) <= MAX_RUN_VARIANTS:
            run = frozenset(prefix + variant for prefix in run for variant in variants)
        else:
            best = _better(best, run)
            run = variants
    return _better(best, run)


def _item_literals(op: Any, argument: Any) -> Literals | None:
    """Return the literals of one node that matches more than a few fixed texts: a group, an alternation or a repeat."""
    if op is sre_constants.SUBPATTERN:
        return _sequence_literals(argument[-1])
    if op is sre_constants.ATOMIC_GROUP:
        return _sequence_literals(argument)
    if op is sre_constants.BRANCH:
        return _branch_literals(argument[1])
    if op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT, sre_constants.POSSESSIVE_REPEAT):
        min_count, _, repeated = argument
        return _sequence_literals(repeated) if min_count >= 1 else None
    return None


def _branch_literals(alternatives: list[Any]) -> Literals | None:
    # A match takes one alternative, so every alternative must contribute.
    found = [_sequence_literals(alternative) for alternative in alternatives]
    if any(literals is None for literals in found):
        return None
    return frozenset().union(*found)  # type: ignore[arg-type]


def _fixed_variants(op: Any, argument: Any) -> Literals | None:
    """Return the few lowercase texts that a node can match, or None when it can match more or other texts.

    A literal, a class of single characters such as ['"], and a group or an
    alternation of such nodes have at most `MAX_RUN_VARIANTS` texts.
    """
    if op is sre_constants.LITERAL:
        char = _ascii_lower(argument)
        return None if char is None else frozenset({char})
    if op is sre_constants.IN:
        return _class_variants(argument)
    if op is sre_constants.SUBPATTERN:
        return _sequence_variants(argument[-1])
    if op is sre_constants.BRANCH:
        found = [_sequence_variants(alternative) for alternative in argument[1]]
        if any(variants is None for variants in found):
            return None
        return _capped(frozenset().union(*found))  # type: ignore[arg-type]
    return None


def _sequence_variants(items: Iterable[tuple[Any, Any]]) -> Literals | None:
    texts: Literals = _EMPTY_RUN
    for op, argument in items:
        variants = _fixed_variants(op, argument)
        if variants is None:
            return None
        texts = _capped(frozenset(prefix + variant for prefix in texts for variant in variants))  # type: ignore[assignment]
        if texts is None:
            return None
    return texts


def _class_variants(members: list[tuple[Any, Any]]) -> Literals | None:
    # Ranges, categories and negated classes match too many characters.
    chars = set()
    for op, argument in members:
        char = _ascii_lower(argument) if op is sre_constants.LITERAL else None
        if char is None:
            return None
        chars.add(char)
    return _capped(frozenset(chars))


def _capped(texts: Literals) -> Literals | None:
    return texts if len(texts) <= MAX_RUN_VARIANTS else None


def _ascii_lower(code_point: int) -> str | None:
    # Non-ASCII literals have case twins that `fold_case` does not map, so
    # they are left out.
    char = chr(code_point)
    return char.lower() if char.isascii() else None


def _better(current: Literals | None, candidate: Literals | None) -> Literals | None:
    if not candidate or "" in candidate:
        return current
    if current is None or min(map(len, candidate)) > min(map(len, current)):
        return candidate
    return current


def _without_superstrings(literals: Literals) -> Literals:
    # A text that contains "'cl" also contains "cl", so "'cl" adds nothing
    # but one more substring search.
    return frozenset(literal for literal in literals if not any(other != literal and other in literal for other in literals))

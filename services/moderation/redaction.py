"""Redacting personal data in output before release, while the output streams.

The output policy's `PII` entries name the entities to look for. After each
chunk passes the streaming check, the matches in the scanned window decide
how far the stream may release. A match that ends before the release point
is replaced by its placeholder (such as `[EMAIL]`) in the stream's text. A
match that runs across the release point moves that point back to the
match's start, because the entity may still grow with the next chunk. The
raw value is therefore never released: only its placeholder is.

Nothing here logs, so no detected value can reach a log.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from shared.scanning import ScannerFailed
from shared.scanning.pii import PiiDetector, PiiEntity, PiiMatch, redact
from shared.scanning.policy import PII_MAX_MATCH_CHARS, PiiSpec, ScannerSpec


class OutputRedactor:
    """The `PII` entries of one output policy, as one detector of the spans to redact before release.

    Every entity whose action is `redact` or `block` is redacted, as
    `PiiScanner` does in its sanitized text. Thread-safe once built.
    """

    def __init__(self, specs: Iterable[ScannerSpec]) -> None:
        """Build a detector per `PII` entry; raises `ValueError` for an unknown phone region."""
        self._detectors = tuple(
            (spec.label, PiiDetector(_searched_entities(spec), phone_regions=spec.options.phone_regions))
            for spec in specs
            if isinstance(spec, PiiSpec) and _searched_entities(spec)
        )

    @property
    def names(self) -> tuple[str, ...]:
        """Labels of the `PII` entries that redact output."""
        return tuple(name for name, _ in self._detectors)

    @property
    def max_match_chars(self) -> int:
        """Characters of output to hold back so that a match is seen whole: 0 when nothing is redacted."""
        return PII_MAX_MATCH_CHARS if self._detectors else 0

    def find(self, text: str) -> list[PiiMatch]:
        """Return the non-overlapping matches of every entry, by position; the earlier entry wins an overlap.

        Raises `ScannerFailed` when a detector raises.
        """
        kept: list[PiiMatch] = []
        for name, detector in self._detectors:
            for match in _find_with(name, detector, text):
                if not any(match.start < other.end and other.start < match.end for other in kept):
                    kept.append(match)
        return sorted(kept)


@dataclass(frozen=True)
class ReleasePlan:
    """The stream's text with the settled matches redacted, and the end of the text that may be released."""

    text: str
    release_end: int
    redacted_count: int


def plan_release(text: str, released_chars: int, cut: int, matches: Sequence[PiiMatch]) -> ReleasePlan:
    """Redact the matches that end by `cut` and return how far `text` may be released.

    `text[:released_chars]` was released already, `cut` is where the
    holdback would end the release, and `matches` are positions in `text`.
    A match that runs across `cut` moves the cut back to the match's start,
    or to `released_chars` when it started in released text. Such a match
    is redacted from `released_chars` on, because the part before it was
    released already. That happens only for a match longer than the holdback.
    """
    for match in matches:
        if match.start < cut < match.end:
            cut = max(released_chars, match.start)

    settled = [
        PiiMatch(max(match.start, released_chars) - released_chars, match.end - released_chars, match.entity)
        for match in matches
        if released_chars < match.end <= cut
    ]
    piece = redact(text[released_chars:cut], settled)
    return ReleasePlan(
        text=text[:released_chars] + piece + text[cut:],
        release_end=released_chars + len(piece),
        redacted_count=len(settled),
    )


def shifted(matches: Iterable[PiiMatch], offset: int) -> list[PiiMatch]:
    """Return `matches` moved by `offset` characters, from window positions to stream positions."""
    return [PiiMatch(match.start + offset, match.end + offset, match.entity) for match in matches]


def _searched_entities(spec: PiiSpec) -> list[PiiEntity]:
    return [entity for entity, action in spec.options.entities.items() if action != "allow"]


def _find_with(name: str, detector: PiiDetector, text: str) -> list[PiiMatch]:
    try:
        return detector.find(text)
    # The detector runs phonenumbers and python-stdnum, which can raise
    # anything on odd input; a failed detector must stop the release.
    except Exception as error:
        raise ScannerFailed(name, f"scanner {name} raised {type(error).__name__}") from error

"""Redacting personal data and secrets in output before release, while the output streams.

The output policy's `PII` entries name the entities to look for, and its
`Secrets` entries add every secret that detect-secrets finds (see
`services.moderation.secret_redaction`). After each chunk passes the
streaming check, the matches in the scanned window decide how far the
stream may release. A match that ends before the release point is replaced
by its placeholder (such as `[EMAIL]` or `[SECRET]`) in the stream's text. A
match that runs across the release point moves that point back to the
match's start, because the entity may still grow with the next chunk. The
raw value is therefore never released: only its placeholder is.

Until generation ends, the release point lies at least `max_match_chars`
characters before the end of the text. So a match that ends within that
held tail, such as a secret whose value detect-secrets reports while it is
still growing, either starts after the release point or runs across it, and
none of it is released. The exception is a match that an earlier window
did not report while its start passed the release point (see
`SECRETS_MAX_MATCH_CHARS`).

Nothing here logs, so no detected value can reach a log.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from services.moderation.secret_redaction import OutputSecretFinder, SecretMatch
from shared.scanning import ScannerFailed
from shared.scanning.pii import PiiDetector, PiiEntity, PiiMatch
from shared.scanning.policy import PII_MAX_MATCH_CHARS, SECRETS_MAX_MATCH_CHARS, PiiSpec, ScannerSpec

# A span of the text to replace by its placeholder before release.
RedactionMatch = PiiMatch | SecretMatch


class OutputRedactor:
    """The `PII` and `Secrets` entries of one output policy, as one detector of the spans to redact before release.

    Every entity whose action is `redact` or `block` is redacted, as
    `PiiScanner` does in its sanitized text, and so is every secret of a
    `Secrets` entry of either action. Thread-safe once built.
    """

    def __init__(self, specs: Iterable[ScannerSpec]) -> None:
        """Build a detector per `PII` entry and one for the `Secrets` entries.

        Raises `ValueError` for an unknown phone region and `PolicyError`
        when the secrets detector cannot be built.
        """
        specs = tuple(specs)
        self._detectors = tuple(
            (spec.label, PiiDetector(_searched_entities(spec), phone_regions=spec.options.phone_regions))
            for spec in specs
            if isinstance(spec, PiiSpec) and _searched_entities(spec)
        )
        self._secrets = OutputSecretFinder(specs)
        redacting = {name for name, _ in self._detectors} | set(self._secrets.names)
        self._names = tuple(spec.label for spec in specs if spec.label in redacting)

    @property
    def names(self) -> tuple[str, ...]:
        """Labels of the `PII` and `Secrets` entries that redact output, in policy order."""
        return self._names

    @property
    def max_match_chars(self) -> int:
        """Characters of output to hold back so that a match is seen whole: 0 when nothing is redacted."""
        pii_chars = PII_MAX_MATCH_CHARS if self._detectors else 0
        secret_chars = SECRETS_MAX_MATCH_CHARS if self._secrets.names else 0
        return max(pii_chars, secret_chars)

    def find(self, text: str, known_secrets: set[str] | None = None) -> list[RedactionMatch]:
        """Return the non-overlapping matches of every entry, by position.

        `known_secrets` is the set of secret values that one stream's earlier
        windows reported; the secrets found in `text` are added to it. None
        starts from an empty set that is not kept.

        The earlier `PII` entry wins an overlap of two personal data
        matches. Where a secret overlaps another match, one `SecretMatch`
        covers both, so that no part of either value is released. Raises
        `ScannerFailed` when a detector raises.
        """
        kept: list[PiiMatch] = []
        for name, detector in self._detectors:
            for match in _find_with(name, detector, text):
                if not any(match.start < other.end and other.start < match.end for other in kept):
                    kept.append(match)
        secrets = self._secrets.find(text, set() if known_secrets is None else known_secrets)
        return _merge_secrets(kept, secrets)


@dataclass(frozen=True)
class ReleasePlan:
    """The stream's text with the settled matches redacted, and the end of the text that may be released."""

    text: str
    release_end: int
    redacted_count: int


def plan_release(text: str, released_chars: int, cut: int, matches: Sequence[RedactionMatch]) -> ReleasePlan:
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
        _moved(match, max(match.start, released_chars) - released_chars, match.end - released_chars)
        for match in matches
        if released_chars < match.end <= cut
    ]
    piece = _redact(text[released_chars:cut], settled)
    return ReleasePlan(
        text=text[:released_chars] + piece + text[cut:],
        release_end=released_chars + len(piece),
        redacted_count=len(settled),
    )


def shifted(matches: Iterable[RedactionMatch], offset: int) -> list[RedactionMatch]:
    """Return `matches` moved by `offset` characters, from window positions to stream positions."""
    return [_moved(match, match.start + offset, match.end + offset) for match in matches]


def _moved(match: RedactionMatch, start: int, end: int) -> RedactionMatch:
    if isinstance(match, SecretMatch):
        return SecretMatch(start, end)
    return PiiMatch(start, end, match.entity)


def _placeholder(match: RedactionMatch) -> str:
    if isinstance(match, SecretMatch):
        return match.placeholder
    return match.entity.placeholder


def _redact(text: str, matches: Iterable[RedactionMatch]) -> str:
    """Return `text` with each match replaced by its placeholder; `matches` must not overlap."""
    parts: list[str] = []
    position = 0
    for match in sorted(matches, key=_span):
        parts.append(text[position : match.start])
        parts.append(_placeholder(match))
        position = match.end
    parts.append(text[position:])
    return "".join(parts)


def _span(match: RedactionMatch) -> tuple[int, int]:
    return (match.start, match.end)


def _merge_secrets(pii_matches: list[PiiMatch], secret_matches: list[SecretMatch]) -> list[RedactionMatch]:
    """Return the matches by position, with each group of overlapping matches that contains a secret made one `SecretMatch`.

    `pii_matches` must not overlap each other, so every group of two or
    more contains a secret.
    """
    merged: list[RedactionMatch] = []
    for match in sorted([*pii_matches, *secret_matches], key=_span):
        last = merged[-1] if merged else None
        if last is not None and match.start < last.end:
            merged[-1] = SecretMatch(last.start, max(last.end, match.end))
        else:
            merged.append(match)
    return merged


def _searched_entities(spec: PiiSpec) -> list[PiiEntity]:
    return [entity for entity, action in spec.options.entities.items() if action != "allow"]


def _find_with(name: str, detector: PiiDetector, text: str) -> list[PiiMatch]:
    try:
        return detector.find(text)
    # The detector runs phonenumbers and python-stdnum, which can raise
    # anything on odd input; a failed detector must stop the release.
    except Exception as error:
        raise ScannerFailed(name, f"scanner {name} raised {type(error).__name__}") from error

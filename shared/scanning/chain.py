"""Running an ordered chain of built scanners over one text and collecting every verdict."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shared.events import ScannerAction, ScannerResult
from shared.scanning.errors import ScannerFailed
from shared.scanning.partial_match import TailStart
from shared.scanning.policy import Action

# llm-guard's scan contract: (sanitized text, is_valid, risk score). The risk
# score runs from -1.0 to 1.0 in llm-guard 0.3.16, where values at or below
# 0.0 mean no risk.
ScanFunction = Callable[[str], tuple[str, bool, float]]

@dataclass(frozen=True)
class PolicyScanner:
    """One scanner of a chain, built from a policy entry."""

    name: str
    action: Action
    # Explanation that a blocked verdict carries.
    reason: str
    scan: ScanFunction
    # Maximum length, in characters, of one match; None when the scanner
    # must read the whole text to decide.
    max_match_chars: int | None
    # Where a match could begin at the end of a text that is still growing;
    # None holds the last `max_match_chars` characters instead.
    tail_start: TailStart | None = None


@dataclass(frozen=True)
class ChainResult:
    """The verdict of a chain on one text."""

    # Every scanner's verdict, in chain order.
    results: tuple[ScannerResult, ...]
    # The text after every scanner's redactions.
    sanitized_text: str
    # The first scanner with action "block" that found the text invalid, and its reason.
    blocked_by: str | None
    reason: str | None
    duration_ms: float

    @property
    def blocked(self) -> bool:
        return self.blocked_by is not None

    @property
    def flagged(self) -> tuple[str, ...]:
        """Names of the scanners that found the text invalid but do not block, in chain order."""
        return tuple(result.scanner for result in self.results if not result.valid and result.scanner != self.blocked_by)


class ScannerChain:
    """An ordered list of scanners, built once and run on many texts.

    Each scanner receives the text as sanitized by the scanners before it, as
    llm-guard's own `scan_prompt` does, so a scanner that strips invisible
    characters runs before the substring checks. Every scanner runs even
    after one blocked, so the verdict lists all of them.

    Several threads may scan at once, because the scanners that a policy
    allows keep no state between scans. That is one reason why the policy's
    Secrets entry is Sluice's own scanner: llm-guard 0.3.16's switches
    detect-secrets' process-wide settings while it scans.
    """

    def __init__(self, scanners: Sequence[PolicyScanner]) -> None:
        self._scanners = tuple(scanners)
        bounded = [scanner.max_match_chars for scanner in self._streaming_scanners()]
        self._holdback_chars = max((chars for chars in bounded if chars is not None), default=0)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(scanner.name for scanner in self._scanners)

    @property
    def holdback_chars(self) -> int:
        """Characters of output that moderation holds back: the longest match of a scanner in `streaming()`, or 0."""
        return self._holdback_chars

    def streaming(self) -> ScannerChain:
        """Return the chain of the blocking scanners whose matches span at most `max_match_chars` characters.

        Such a scanner finds every match that overlaps the unreleased output
        when it scans that output plus `holdback_chars` characters before it.
        """
        return ScannerChain(self._streaming_scanners())

    def release_end(self, window: str) -> int:
        """Return how much of `window`, output that may still grow, the chain's scanners let go.

        Each streaming scanner holds the tail where one of its matches could
        still begin (see `shared.scanning.partial_match`). A scanner without
        that check holds its last `max_match_chars` characters. Call it on
        the chain that `streaming()` returns, after a scan that did not block.
        """
        ends = [len(window)]
        for scanner in self._streaming_scanners():
            fixed_end = len(window) - (scanner.max_match_chars or 0)
            if scanner.tail_start is None:
                ends.append(fixed_end)
            else:
                # A match is at most `max_match_chars` long, so a partial
                # match that starts before that can never complete.
                ends.append(max(fixed_end, scanner.tail_start(window)))
        return max(0, min(ends))

    def _streaming_scanners(self) -> list[PolicyScanner]:
        return [scanner for scanner in self._scanners if scanner.action == "block" and scanner.max_match_chars is not None]

    def scan(self, text: str) -> ChainResult:
        """Run every scanner on `text` in the calling thread.

        Raises `ScannerFailed` when a scanner raises; the original error is the cause.
        """
        started = time.perf_counter()
        results: list[ScannerResult] = []
        blocking: PolicyScanner | None = None
        for scanner in self._scanners:
            text, result = _run_scanner(scanner, text)
            results.append(result)
            if blocking is None and scanner.action == "block" and not result.valid:
                blocking = scanner

        return ChainResult(
            results=tuple(results),
            sanitized_text=text,
            blocked_by=blocking.name if blocking else None,
            reason=blocking.reason if blocking else None,
            duration_ms=_elapsed_ms(started),
        )

    async def scan_async(self, text: str) -> ChainResult:
        """Run `scan` in a worker thread so the event loop keeps serving other messages."""
        return await asyncio.to_thread(self.scan, text)


def _run_scanner(scanner: PolicyScanner, text: str) -> tuple[str, ScannerResult]:
    started = time.perf_counter()
    try:
        sanitized, valid, risk_score = scanner.scan(text)
    # Scanners are third-party code that can raise anything; this is the one
    # place where their errors become ScannerFailed.
    except Exception as error:
        raise ScannerFailed(scanner.name, f"scanner {scanner.name} raised {type(error).__name__}") from error

    result = ScannerResult(
        scanner=scanner.name,
        valid=bool(valid),
        # llm-guard reports "no risk" as -1.0 or a negative score; events carry 0.0 to 1.0.
        risk_score=min(1.0, max(0.0, float(risk_score))),
        duration_ms=_elapsed_ms(started),
        action=_action_taken(scanner, bool(valid), redacted=sanitized != text),
    )
    return sanitized, result


def _action_taken(scanner: PolicyScanner, valid: bool, *, redacted: bool) -> ScannerAction | None:
    # An invalid verdict takes the entry's action even when the scanner also
    # redacted, because blocking or flagging is what the report counts then.
    if not valid:
        return scanner.action
    return "redact" if redacted else None


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0

"""The streaming check: scan each new piece of output with enough context and hold back what a match could still reach.

L (`holdback_chars`) is the longest text that a blocking BanSubstrings or
Regex scanner can match, or the policy's `moderation.min_holdback_chars`
when that is larger. After each chunk, the window of unreleased text
plus the L characters before it is scanned, and everything except the last
L characters is released. A banned string therefore never reaches the
release log in part: it either lies in a window that is scanned before any
of it is released, or it ends within the held tail.

NOTE: the window edges look like text edges to the scanners, so a `word`
match or a pattern with anchors or lookarounds can match at an edge where
the whole text would not. That blocks early but never releases banned text.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.moderation.stream import OutputStream
from shared.scanning import ChainResult, Policy, ScannerChain, build_output_chain

# The llm-guard output scanner that detects refusals. Its verdict becomes the
# `refusal` flag of `output.moderated`.
REFUSAL_SCANNER_TYPE = "NoRefusalLight"


class Holdback:
    """The output chain's streaming part and its holdback length.

    `min_holdback_chars` raises the holdback above the longest match of the
    streaming scanners; it never lowers it.
    """

    def __init__(self, output_chain: ScannerChain, min_holdback_chars: int = 0) -> None:
        if min_holdback_chars < 0:
            raise ValueError(f"min_holdback_chars must be 0 or more, got {min_holdback_chars}")
        self._chain = output_chain.streaming()
        self._holdback_chars = max(self._chain.holdback_chars, min_holdback_chars)

    @property
    def holdback_chars(self) -> int:
        """L: characters of output held back until more text or the end of generation arrives."""
        return self._holdback_chars

    @property
    def scanner_names(self) -> tuple[str, ...]:
        return self._chain.names

    async def check(self, stream: OutputStream) -> ChainResult:
        """Scan the unreleased text of `stream` with L characters of context; raises `ScannerFailed`."""
        return await self._chain.scan_async(stream.scan_window(self.holdback_chars))

    def releasable(self, stream: OutputStream) -> str:
        """Return the text that can be released after a passing `check`: all but the last L characters."""
        return stream.releasable(self.holdback_chars)


@dataclass(frozen=True)
class OutputScanners:
    """The output chain of one policy and its streaming part, built once per policy."""

    full_chain: ScannerChain
    holdback: Holdback
    # Names of the chain's refusal scanners, whose verdicts set the `refusal` flag.
    refusal_scanners: frozenset[str] = frozenset()

    @classmethod
    def build(
        cls, output_chain: ScannerChain, min_holdback_chars: int = 0, refusal_scanners: frozenset[str] = frozenset()
    ) -> OutputScanners:
        holdback = Holdback(output_chain, min_holdback_chars)
        return cls(full_chain=output_chain, holdback=holdback, refusal_scanners=refusal_scanners)

    @classmethod
    def from_policy(cls, policy: Policy) -> OutputScanners:
        """Build the output chain of `policy` and its streaming part; raises `PolicyError`."""
        refusal_scanners = frozenset(spec.label for spec in policy.output if spec.type == REFUSAL_SCANNER_TYPE)
        return cls.build(build_output_chain(policy), policy.moderation.min_holdback_chars, refusal_scanners)

    def is_refusal(self, verdict: ChainResult) -> bool:
        """Return whether a refusal scanner found the text invalid in `verdict`."""
        return any(not result.valid for result in verdict.results if result.scanner in self.refusal_scanners)

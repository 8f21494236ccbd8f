"""The streaming check: scan each new piece of output with enough context and hold back what a match could still reach.

L (`holdback_chars`) is the longest text that a blocking BanSubstrings or
Regex scanner can match. After each chunk, the window of unreleased text
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
from shared.scanning import ChainResult, ScannerChain


class Holdback:
    """The output chain's streaming part and its holdback length."""

    def __init__(self, output_chain: ScannerChain) -> None:
        self._chain = output_chain.streaming()

    @property
    def holdback_chars(self) -> int:
        """L: characters of output held back until more text or the end of generation arrives."""
        return self._chain.holdback_chars

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

    @classmethod
    def build(cls, output_chain: ScannerChain) -> OutputScanners:
        return cls(full_chain=output_chain, holdback=Holdback(output_chain))

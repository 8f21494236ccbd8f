"""The streaming check: scan each new piece of output with enough context and hold back what a match could still reach.

L (`holdback_chars`) is the longest text that a blocking BanSubstrings,
Regex or PII scanner can match, `PII_MAX_MATCH_CHARS` or
`SECRETS_MAX_MATCH_CHARS` when a PII or Secrets entry redacts output, or
the policy's `moderation.min_holdback_chars` when that is larger. After
each chunk, the window of unreleased text plus the L characters before it
is scanned. What is released then stops where a banned string or pattern
could still begin, which is found by partial matching (see
`shared.scanning.partial_match`), and never holds more than each scanner's
longest match. A redactor of personal data or secrets and
`min_holdback_chars` hold their fixed number of characters. A banned
string therefore never reaches the release log in part: it either lies in
a window that is scanned before any of it is released, or it starts within
the held tail. Personal data and secrets in the window are redacted before
release (see `services.moderation.redaction`).

NOTE: the window edges look like text edges to the scanners, so a `word`
match or a pattern with anchors or lookarounds can match at an edge where
the whole text would not. That blocks early but never releases banned text.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from services.moderation.redaction import OutputRedactor, RedactionMatch, plan_release, shifted
from services.moderation.stream import OutputStream
from shared.scanning import ChainResult, Policy, ScannerChain, build_output_chains

# The llm-guard output scanner that detects refusals. Its verdict becomes the
# `refusal` flag of `output.moderated`.
REFUSAL_SCANNER_TYPE = "NoRefusalLight"


class Holdback:
    """The output chain's streaming part, the redactor of personal data, and the holdback length.

    `min_holdback_chars` raises the holdback above the longest match of the
    streaming scanners and the redactor. It never lowers it.
    """

    def __init__(
        self, output_chain: ScannerChain, min_holdback_chars: int = 0, redactor: OutputRedactor | None = None
    ) -> None:
        if min_holdback_chars < 0:
            raise ValueError(f"min_holdback_chars must be 0 or more, got {min_holdback_chars}")
        self._chain = output_chain.streaming()
        self._redactor = redactor if redactor is not None else OutputRedactor(())
        self._min_holdback_chars = min_holdback_chars
        self._holdback_chars = max(self._chain.holdback_chars, self._redactor.max_match_chars, min_holdback_chars)

    @property
    def holdback_chars(self) -> int:
        """L: characters of output held back until more text or the end of generation arrives."""
        return self._holdback_chars

    @property
    def scanner_names(self) -> tuple[str, ...]:
        return self._chain.names

    @property
    def redactor_names(self) -> tuple[str, ...]:
        """Labels of the `PII` and `Secrets` entries that redact output before release."""
        return self._redactor.names

    async def check(self, stream: OutputStream) -> ChainResult:
        """Scan the unreleased text of `stream` with L characters of context, and settle what may be released.

        When the verdict does not block, the stream may release all but its
        last L characters, with personal data redacted. A match that runs
        into the held tail is held back whole. Raises `ScannerFailed`.
        """
        window_start = stream.scan_start(self.holdback_chars)
        window = stream.text[window_start:]
        verdict, matches, release_end = await asyncio.to_thread(self._inspect, window, stream.known_secrets)
        if not verdict.blocked:
            _settle(stream, max(stream.released_chars, window_start + release_end), shifted(matches, window_start))
        return verdict

    async def settle_at_end(self, stream: OutputStream) -> None:
        """Redact the held tail once generation ended and the full check passed, so all of it may be released.

        Raises `ScannerFailed`.
        """
        window_start = stream.scan_start(self.holdback_chars)
        matches = await asyncio.to_thread(self._redactor.find, stream.text[window_start:], stream.known_secrets)
        _settle(stream, len(stream.text), shifted(matches, window_start))

    def releasable(self, stream: OutputStream) -> str:
        """Return the text that can be released after a passing `check`."""
        return stream.releasable()

    def _inspect(self, window: str, known_secrets: set[str]) -> tuple[ChainResult, list[RedactionMatch], int]:
        # All of it runs in one worker thread, so a chunk costs one thread hop.
        verdict = self._chain.scan(window)
        matches = self._redactor.find(window, known_secrets)
        return verdict, matches, self._release_end(window)

    def _release_end(self, window: str) -> int:
        """Return how much of `window` the streaming scanners, the redactor and `min_holdback_chars` let go."""
        fixed_holdback_chars = max(self._redactor.max_match_chars, self._min_holdback_chars)
        return max(0, min(self._chain.release_end(window), len(window) - fixed_holdback_chars))


def _settle(stream: OutputStream, cut: int, matches: list[RedactionMatch]) -> None:
    plan = plan_release(stream.text, stream.released_chars, cut, matches)
    stream.settle(plan.text, plan.release_end)
    stream.redacted_count += plan.redacted_count


@dataclass(frozen=True)
class OutputScanners:
    """The output chain of one policy and its streaming part, built once per policy."""

    full_chain: ScannerChain
    holdback: Holdback
    # Names of the chain's refusal scanners, whose verdicts set the `refusal` flag.
    refusal_scanners: frozenset[str] = frozenset()

    @classmethod
    def build(
        cls,
        output_chain: ScannerChain,
        min_holdback_chars: int = 0,
        refusal_scanners: frozenset[str] = frozenset(),
        redactor: OutputRedactor | None = None,
    ) -> OutputScanners:
        holdback = Holdback(output_chain, min_holdback_chars, redactor)
        return cls(full_chain=output_chain, holdback=holdback, refusal_scanners=refusal_scanners)

    @classmethod
    def from_policy(cls, policy: Policy) -> OutputScanners:
        """Build the output scanners of requests that no override applies to; raises `PolicyError`."""
        return OutputPolicy(policy).default

    @classmethod
    def from_resolved(cls, resolved: Policy, output_chain: ScannerChain) -> OutputScanners:
        """Build the scanners of a policy without overrides (`Policy.resolve`) around its built output chain."""
        refusal_scanners = frozenset(spec.label for spec in resolved.output if spec.type == REFUSAL_SCANNER_TYPE)
        redactor = OutputRedactor(resolved.output)
        return cls.build(output_chain, resolved.moderation.min_holdback_chars, refusal_scanners, redactor)

    def is_refusal(self, verdict: ChainResult) -> bool:
        """Return whether a refusal scanner found the text invalid in `verdict`."""
        return any(not result.valid for result in verdict.results if result.scanner in self.refusal_scanners)


class OutputPolicy:
    """The output scanners of each tenant and route profile of one policy, built once per policy."""

    def __init__(self, policy: Policy) -> None:
        """Build the scanners of every profile; raises `PolicyError` when one cannot be built."""
        self._policy = policy
        # Profiles with the same output list share one built chain.
        chains = build_output_chains(policy)
        self._by_profile = {
            (tenant, route): OutputScanners.from_resolved(policy.resolve(tenant, route), chains.for_request(tenant, route))
            for tenant, route in policy.profiles()
        }

    @property
    def default(self) -> OutputScanners:
        """The scanners of requests that no override applies to."""
        return self._by_profile[(None, None)]

    def for_request(self, tenant: str | None, route: str | None) -> OutputScanners:
        """Return the scanners for an output of `tenant` on `route` (None when no HTTP route accepted it)."""
        return self._by_profile[self._policy.profile(tenant, route)]

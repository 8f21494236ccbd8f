"""The signals the drift service watches, and the kind of comparison each one gets.

The names are a contract: `drift.evaluated` events and the `drift_reports`
table carry them, and the ingress's drift report filters by them.
"""

from __future__ import annotations

from enum import StrEnum


class SignalKind(StrEnum):
    """How a signal's samples look, which decides the statistics it gets."""

    # One float per request: KS test and PSI.
    NUMERIC = "numeric"
    # One 0/1 outcome per request: chi-square (or Fisher's exact) test.
    RATE = "rate"
    # One embedding row per request: domain classifier ROC AUC and centroid distance.
    EMBEDDING = "embedding"


class Signal(StrEnum):
    """A per-request quantity whose distribution is compared between windows."""

    PROMPT_CHARS = "prompt_chars"
    OUTPUT_CHARS = "output_chars"
    SCREENING_SCORE = "screening_score"
    MODERATION_SCORE = "moderation_score"
    REFUSAL_RATE = "refusal_rate"
    BLOCK_RATE = "block_rate"
    FEEDBACK_RATE = "feedback_rate"
    CONVERSION_RATE = "conversion_rate"
    PROMPT_EMBEDDING = "prompt_embedding"

    @property
    def kind(self) -> SignalKind:
        return _KINDS[self]


_KINDS = {
    Signal.PROMPT_CHARS: SignalKind.NUMERIC,
    Signal.OUTPUT_CHARS: SignalKind.NUMERIC,
    Signal.SCREENING_SCORE: SignalKind.NUMERIC,
    Signal.MODERATION_SCORE: SignalKind.NUMERIC,
    Signal.REFUSAL_RATE: SignalKind.RATE,
    Signal.BLOCK_RATE: SignalKind.RATE,
    Signal.FEEDBACK_RATE: SignalKind.RATE,
    Signal.CONVERSION_RATE: SignalKind.RATE,
    Signal.PROMPT_EMBEDDING: SignalKind.EMBEDDING,
}

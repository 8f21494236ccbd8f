"""Screening one accepted request: the verdict and the event that carries it forward, without bus I/O."""

from __future__ import annotations

import structlog

from shared.consuming import expired_event
from shared.events import (
    AcceptedPayload,
    Envelope,
    EventType,
    FailedPayload,
    RequestSpec,
    ScreenedPayload,
    Verdict,
)
from shared.scanning import ScannerChain, ScannerFailed

log = structlog.get_logger(__name__)

STAGE = "safety"

# The error code of a request that failed because a scanner raised.
SCANNER_FAILED = "scanner_failed"

# Assistant messages are earlier model output, not user input, so only these roles are screened.
_SCREENED_ROLES = frozenset({"system", "user"})


def prompt_text(request: RequestSpec) -> str:
    """Return the system and user message contents, one per line, in message order."""
    return "\n".join(message.content for message in request.messages if message.role in _SCREENED_ROLES)


class Screener:
    """Decides the follow-up event of each `request.accepted` envelope."""

    def __init__(self, chain: ScannerChain) -> None:
        self._chain = chain

    async def screen(self, envelope: Envelope, accepted: AcceptedPayload) -> Envelope:
        """Return `request.expired` after the deadline, `request.screened` otherwise.

        When a scanner raises, the verdict is unknown and the request fails
        closed: the result is `request.failed` with error code `scanner_failed`.
        """
        expired = expired_event(envelope, STAGE)
        if expired is not None:
            return expired

        try:
            verdict = await self._chain.scan_async(prompt_text(accepted.request))
        except ScannerFailed as error:
            log.error("scanner_failed", request_id=envelope.request_id, scanner=error.scanner, exc_info=error)
            failed = FailedPayload(stage=STAGE, error_code=SCANNER_FAILED, message=f"prompt screening failed: {error}")
            return envelope.follow_up(EventType.FAILED, failed)

        log.info(
            "prompt_screened",
            request_id=envelope.request_id,
            tenant=envelope.tenant,
            verdict=Verdict.BLOCKED.value if verdict.blocked else Verdict.PASSED.value,
            blocked_by=verdict.blocked_by,
            flagged=list(verdict.flagged),
            duration_ms=round(verdict.duration_ms, 2),
        )
        screened = ScreenedPayload(
            request=accepted.request,
            verdict=Verdict.BLOCKED if verdict.blocked else Verdict.PASSED,
            scanners=list(verdict.results),
            blocked_by=verdict.blocked_by,
            reason=verdict.reason,
        )
        return envelope.follow_up(EventType.SCREENED, screened)

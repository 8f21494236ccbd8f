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
from shared.scanning import ChainResult, ChainsByProfile, ScannerChain, ScannerFailed

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
    """Decides the follow-up event of each `request.accepted` envelope.

    `chains` gives the chain for the envelope's tenant and route; a single
    `ScannerChain` screens every request.
    """

    def __init__(self, chains: ChainsByProfile | ScannerChain) -> None:
        self._chains = chains

    async def screen(self, envelope: Envelope, accepted: AcceptedPayload) -> Envelope:
        """Return `request.expired` after the deadline, `request.screened` otherwise.

        When a scanner raises, the verdict is unknown and the request fails
        closed: the result is `request.failed` with error code `scanner_failed`.
        """
        expired = expired_event(envelope, STAGE)
        if expired is not None:
            return expired

        chain = self._chain_for(envelope)
        try:
            verdict = await chain.scan_async(prompt_text(accepted.request))
            request = await _sanitized_request(chain, accepted.request, verdict)
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
            sanitized=request is not accepted.request,
            duration_ms=round(verdict.duration_ms, 2),
        )
        screened = ScreenedPayload(
            request=request,
            verdict=Verdict.BLOCKED if verdict.blocked else Verdict.PASSED,
            scanners=list(verdict.results),
            blocked_by=verdict.blocked_by,
            reason=verdict.reason,
        )
        return envelope.follow_up(EventType.SCREENED, screened)

    def _chain_for(self, envelope: Envelope) -> ScannerChain:
        if isinstance(self._chains, ScannerChain):
            return self._chains
        return self._chains.for_request(envelope.tenant, envelope.route)


async def _sanitized_request(chain: ScannerChain, request: RequestSpec, verdict: ChainResult) -> RequestSpec:
    """Return `request` itself when the chain changed nothing, else a copy whose screened messages are sanitized.

    The verdict comes from the messages joined into one text, which cannot be
    split back into messages reliably, because a message may contain line
    breaks itself. So each screened message is scanned again on its own,
    which costs a second scan only for prompts that had something redacted.
    Raises `ScannerFailed`.
    """
    if verdict.sanitized_text == prompt_text(request):
        return request
    messages = []
    for message in request.messages:
        if message.role in _SCREENED_ROLES:
            sanitized = await chain.scan_async(message.content)
            message = message.model_copy(update={"content": sanitized.sanitized_text})
        messages.append(message)
    return request.model_copy(update={"messages": messages})

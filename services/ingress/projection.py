"""The mapping from events to status record changes, and to final messages for requests that end before moderation.

Pure functions over envelopes; `projector.py` applies their results to Redis.
Timings come from the envelopes' timestamps, so a late or redelivered event
records the same value again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from services.ingress.state_store import RecordField, RequestStatus, StateUpdate
from shared.cancellation import CANCELLED
from shared.events import (
    AssignedPayload,
    CancelledPayload,
    CompletedPayload,
    DeliveredPayload,
    Envelope,
    EventType,
    FailedPayload,
    ModeratedPayload,
    ScannerResult,
    ScreenedPayload,
    Usage,
    Verdict,
)
from shared.trace_context import TRACEPARENT

# Moderation delivers a blocked output with this finish reason; the request then ends as blocked.
MODERATION_FINISH_REASON = "moderation"


def _timestamp(envelope: Envelope) -> str:
    return envelope.ts.isoformat()


def _verdicts(scanners: list[ScannerResult]) -> str:
    return json.dumps([scanner.model_dump(mode="json") for scanner in scanners])


def _usage_fields(usage: Usage) -> dict[RecordField, str]:
    return {
        RecordField.PROMPT_TOKENS: str(usage.prompt_tokens),
        RecordField.COMPLETION_TOKENS: str(usage.completion_tokens),
    }


def _blocked_fields(blocked_by: str | None, reason: str | None) -> dict[RecordField, str]:
    return {RecordField.BLOCKED_BY: blocked_by or "", RecordField.REASON: reason or ""}


def _accepted(envelope: Envelope) -> StateUpdate:
    fields = {RecordField.ACCEPTED_AT: _timestamp(envelope)}
    if TRACEPARENT in envelope.trace:
        fields[RecordField.TRACEPARENT] = envelope.trace[TRACEPARENT]
    return StateUpdate(RequestStatus.SCREENING, fields)


def _screened(envelope: Envelope) -> StateUpdate:
    payload: ScreenedPayload = envelope.parsed_payload()
    fields = {RecordField.SCREENED_AT: _timestamp(envelope), RecordField.INPUT_VERDICTS: _verdicts(payload.scanners)}
    if payload.verdict is Verdict.PASSED:
        return StateUpdate(RequestStatus.QUEUED, fields)
    fields |= _blocked_fields(payload.blocked_by, payload.reason)
    fields[RecordField.ENDED_AT] = _timestamp(envelope)
    return StateUpdate(RequestStatus.BLOCKED, fields)


def _assigned(envelope: Envelope) -> StateUpdate:
    payload: AssignedPayload = envelope.parsed_payload()
    fields = {
        RecordField.ASSIGNED_AT: _timestamp(envelope),
        RecordField.EXPERIMENT_KEY: payload.experiment_key or "",
        RecordField.VARIANT_KEY: payload.variant.key,
        RecordField.BACKEND: payload.variant.backend,
    }
    return StateUpdate(RequestStatus.QUEUED, fields)


def _first_token(envelope: Envelope) -> StateUpdate:
    return StateUpdate(RequestStatus.GENERATING, {RecordField.FIRST_TOKEN_AT: _timestamp(envelope)})


def _completed(envelope: Envelope) -> StateUpdate:
    # The generated text is not what the client received; `output.delivered` carries that.
    payload: CompletedPayload = envelope.parsed_payload()
    return StateUpdate(None, {RecordField.COMPLETED_AT: _timestamp(envelope), **_usage_fields(payload.usage)})


def _moderated(envelope: Envelope) -> StateUpdate:
    payload: ModeratedPayload = envelope.parsed_payload()
    fields = {RecordField.OUTPUT_VERDICTS: _verdicts(payload.scanners)}
    if payload.verdict is Verdict.BLOCKED:
        fields |= _blocked_fields(payload.blocked_by, payload.reason)
    return StateUpdate(None, fields)


def _delivered(envelope: Envelope) -> StateUpdate:
    payload: DeliveredPayload = envelope.parsed_payload()
    fields = {
        RecordField.DELIVERED_AT: _timestamp(envelope),
        RecordField.ENDED_AT: _timestamp(envelope),
        RecordField.TEXT: payload.text,
        RecordField.FINISH_REASON: payload.finish_reason,
        **_usage_fields(payload.usage),
    }
    blocked = payload.finish_reason == MODERATION_FINISH_REASON
    return StateUpdate(RequestStatus.BLOCKED if blocked else RequestStatus.COMPLETED, fields)


def _failed(envelope: Envelope) -> StateUpdate:
    payload: FailedPayload = envelope.parsed_payload()
    fields = {
        RecordField.ENDED_AT: _timestamp(envelope),
        RecordField.ERROR_CODE: payload.error_code,
        RecordField.ERROR_MESSAGE: payload.message,
    }
    return StateUpdate(RequestStatus.FAILED, fields)


def _expired(envelope: Envelope) -> StateUpdate:
    return StateUpdate(RequestStatus.EXPIRED, {RecordField.ENDED_AT: _timestamp(envelope)})


def _cancelled(envelope: Envelope) -> StateUpdate:
    payload: CancelledPayload = envelope.parsed_payload()
    fields = {
        RecordField.ENDED_AT: _timestamp(envelope),
        RecordField.ERROR_CODE: CANCELLED,
        RecordField.ERROR_MESSAGE: f"cancelled ({payload.reason})",
    }
    return StateUpdate(RequestStatus.CANCELLED, fields)


_UPDATES: dict[EventType, Callable[[Envelope], StateUpdate]] = {
    EventType.ACCEPTED: _accepted,
    EventType.SCREENED: _screened,
    EventType.ASSIGNED: _assigned,
    EventType.FIRST_TOKEN: _first_token,
    EventType.COMPLETED: _completed,
    EventType.MODERATED: _moderated,
    EventType.DELIVERED: _delivered,
    EventType.FAILED: _failed,
    EventType.EXPIRED: _expired,
    EventType.CANCELLED: _cancelled,
}


def state_update(envelope: Envelope) -> StateUpdate | None:
    """Return what `envelope` changes in the status record, or None for a type that changes nothing.

    Raises `pydantic.ValidationError` when the payload does not fit its type.
    """
    build = _UPDATES.get(envelope.type)
    return build(envelope) if build else None


def final_message(envelope: Envelope) -> dict[str, Any] | None:
    """Return the release log's final message for an event that ends a request before moderation, else None.

    Moderation writes the final message of every request that reached it, so
    only a prompt blocked at screening, a failure, a cancellation and an
    expiry get one here; when both write, the first final message stays.
    """
    if envelope.type is EventType.SCREENED:
        screened: ScreenedPayload = envelope.parsed_payload()
        if screened.verdict is Verdict.PASSED:
            return None
        return {"status": "blocked", "stage": "input", "blocked_by": screened.blocked_by, "reason": screened.reason}
    if envelope.type is EventType.FAILED:
        failed: FailedPayload = envelope.parsed_payload()
        return {"status": "failed", "error_code": failed.error_code, "message": failed.message}
    if envelope.type is EventType.EXPIRED:
        return {"status": "expired"}
    if envelope.type is EventType.CANCELLED:
        cancelled: CancelledPayload = envelope.parsed_payload()
        return {"status": CANCELLED, "reason": cancelled.reason}
    return None

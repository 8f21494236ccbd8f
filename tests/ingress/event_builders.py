"""Builders of realistic event sequences for the projection and projector tests."""

from __future__ import annotations

import uuid
from datetime import timedelta

from shared.events import (
    AcceptedPayload,
    AssignedPayload,
    ChatMessage,
    CompletedPayload,
    DeliveredPayload,
    Envelope,
    EventType,
    ExpiredPayload,
    FailedPayload,
    FirstTokenPayload,
    ModeratedPayload,
    RequestSpec,
    ScannerResult,
    ScreenedPayload,
    Usage,
    VariantSpec,
    Verdict,
    new_envelope,
    utc_now,
)

SPEC = RequestSpec(messages=[ChatMessage(role="user", content="Speak of the sea.")])
USAGE = Usage(prompt_tokens=7, completion_tokens=12)
PASSED_SCAN = ScannerResult(scanner="BanSubstrings", valid=True, risk_score=0.0, duration_ms=0.4)
BLOCKED_SCAN = ScannerResult(scanner="PromptInjection", valid=False, risk_score=0.97, duration_ms=21.0)


def accepted(tenant: str = "acme", request_id: str | None = None) -> Envelope:
    return new_envelope(
        EventType.ACCEPTED,
        request_id=request_id or uuid.uuid4().hex,
        tenant=tenant,
        payload=AcceptedPayload(request=SPEC, prompt_chars=17),
        deadline=utc_now() + timedelta(minutes=5),
    )


def screened(start: Envelope, verdict: Verdict = Verdict.PASSED) -> Envelope:
    if verdict is Verdict.PASSED:
        payload = ScreenedPayload(request=SPEC, verdict=verdict, scanners=[PASSED_SCAN])
    else:
        payload = ScreenedPayload(
            request=SPEC,
            verdict=verdict,
            scanners=[PASSED_SCAN, BLOCKED_SCAN],
            blocked_by="PromptInjection",
            reason="prompt injection detected",
        )
    return start.follow_up(EventType.SCREENED, payload)


def assigned(start: Envelope, backend: str = "local") -> Envelope:
    payload = AssignedPayload(
        request=SPEC,
        experiment_key="temperature-test",
        variant=VariantSpec(key="warm", backend=backend),
        hash_value=0.42,
        hash_attribute="request_id",
    )
    return start.follow_up(EventType.ASSIGNED, payload)


def first_token(start: Envelope, backend: str = "local") -> Envelope:
    payload = FirstTokenPayload(variant_key="warm", backend=backend, attempt=1, backend_ttft_ms=8.0)
    return start.follow_up(EventType.FIRST_TOKEN, payload, attempt=1)


def completed(start: Envelope, text: str = "raw generated text") -> Envelope:
    payload = CompletedPayload(
        variant_key="warm", backend="local", attempt=1, text=text, finish_reason="length", usage=USAGE, generation_ms=40.0
    )
    return start.follow_up(EventType.COMPLETED, payload, attempt=1)


def moderated(start: Envelope, verdict: Verdict = Verdict.PASSED) -> Envelope:
    if verdict is Verdict.PASSED:
        payload = ModeratedPayload(verdict=verdict, scanners=[PASSED_SCAN])
    else:
        payload = ModeratedPayload(verdict=verdict, scanners=[BLOCKED_SCAN], blocked_by="BanSubstrings", reason="banned word")
    return start.follow_up(EventType.MODERATED, payload)


def delivered(start: Envelope, text: str = "The sea, the sea.", finish_reason: str = "length") -> Envelope:
    payload = DeliveredPayload(text=text, finish_reason=finish_reason, chunks=2, usage=USAGE)
    return start.follow_up(EventType.DELIVERED, payload)


def failed(start: Envelope) -> Envelope:
    payload = FailedPayload(stage="inference", error_code="backend_unavailable", message="the backend did not answer")
    return start.follow_up(EventType.FAILED, payload)


def expired(start: Envelope) -> Envelope:
    assert start.deadline is not None
    return start.follow_up(EventType.EXPIRED, ExpiredPayload(stage="safety", deadline=start.deadline))


def completed_sequence(start: Envelope) -> list[Envelope]:
    """The events of a request that completed, in the order the stages publish them."""
    return [start, screened(start), assigned(start), first_token(start), completed(start), moderated(start), delivered(start)]

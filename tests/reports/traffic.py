"""A known set of requests for the analytics report tests: their events, and the inputs the tests compute expected numbers from."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared.events import (
    AcceptedPayload,
    AssignedPayload,
    CancelledPayload,
    ChatMessage,
    CompletedPayload,
    Envelope,
    EventType,
    FailedPayload,
    GenerationStats,
    ModeratedPayload,
    RequestSpec,
    ScannerAction,
    ScannerResult,
    ScreenedPayload,
    Usage,
    VariantSpec,
    Verdict,
    derive_event_id,
)

REQUEST = RequestSpec(messages=[ChatMessage(role="user", content="hello")])
# (variant key, model name)
CONTROL = ("control", "model-a")
TREATMENT = ("treatment", "model-b")


@dataclass
class RequestSpecification:
    """One request's outcome and numbers; `bucket` is the hour after the traffic's start that it falls in."""

    request_id: str
    bucket: int
    minute: int
    variant: tuple[str, str] | None
    # One of completed, failed, cancelled and screen_blocked.
    outcome: str
    ttft_ms: float = 0.0
    queue_ms: float = 0.0
    generation_ms: float = 0.0
    prompt_tokens: int = 0
    output_tokens: int = 0
    error_code: str = ""
    cancel_reason: str = ""
    screening_scores: dict[str, float] = field(default_factory=lambda: {"PromptInjection": 0.125, "Toxicity": 0.25})
    screening_blocked_by: str | None = None
    # The actions of scanners other than the blocking one, which takes "block" by itself.
    screening_actions: dict[str, ScannerAction] = field(default_factory=dict)
    moderation_scores: dict[str, float] = field(default_factory=lambda: {"Toxicity": 0.5, "NoRefusalLight": 0.0})
    moderation_blocked_by: str | None = None
    moderation_actions: dict[str, ScannerAction] = field(default_factory=dict)
    refusal: bool = False

    @property
    def total_ms(self) -> float:
        return self.queue_ms + self.generation_ms


def _completed(rid: str, bucket: int, minute: int, variant: tuple[str, str], ttft: float, queue: float, generation: float,
               prompt: int, output: int, **extra: object) -> RequestSpecification:
    return RequestSpecification(
        rid, bucket, minute, variant, "completed", ttft_ms=ttft, queue_ms=queue, generation_ms=generation,
        prompt_tokens=prompt, output_tokens=output, **extra,
    )


def known_requests() -> list[RequestSpecification]:
    """Return two hours of traffic of two variants (two models): completed, failed, cancelled and blocked requests.

    Some screening and moderation scanners flag or redact, and one blocked prompt has a second blocking scanner.
    """
    return [
        _completed("c1", 0, 5, CONTROL, 40.0, 10.0, 200.0, 12, 30),
        _completed("c2", 0, 6, CONTROL, 60.0, 20.0, 300.0, 14, 50, refusal=True,
                   moderation_scores={"Toxicity": 0.5, "NoRefusalLight": 1.0},
                   moderation_actions={"NoRefusalLight": "flag"}),
        _completed("c3", 0, 7, CONTROL, 90.0, 5.0, 250.0, 10, 20,
                   screening_scores={"PromptInjection": 0.125, "Toxicity": 0.25, "PII": 1.0},
                   screening_actions={"PII": "redact"}),
        _completed("c4", 0, 8, CONTROL, 130.0, 15.0, 500.0, 16, 80, moderation_blocked_by="Toxicity",
                   moderation_scores={"Toxicity": 0.875, "NoRefusalLight": 0.0}),
        _completed("t1", 0, 9, TREATMENT, 25.0, 30.0, 150.0, 11, 40,
                   screening_scores={"PromptInjection": 0.625, "Toxicity": 0.25, "PII": 1.0},
                   screening_actions={"PromptInjection": "flag", "PII": "redact"}),
        _completed("t2", 0, 10, TREATMENT, 35.0, 40.0, 180.0, 13, 45),
        _completed("c5", 1, 5, CONTROL, 70.0, 25.0, 400.0, 20, 60),
        _completed("t3", 1, 6, TREATMENT, 45.0, 50.0, 210.0, 9, 35,
                   moderation_scores={"Toxicity": 0.5, "NoRefusalLight": 0.0, "PII": 1.0},
                   moderation_actions={"PII": "redact"}),
        _completed("t4", 1, 7, TREATMENT, 55.0, 60.0, 260.0, 12, 55),
        _completed("t5", 1, 8, TREATMENT, 65.0, 70.0, 240.0, 15, 25),
        RequestSpecification("f1", 0, 20, CONTROL, "failed", queue_ms=12.0, prompt_tokens=10, output_tokens=3,
                             error_code="backend_error"),
        RequestSpecification("f2", 1, 20, TREATMENT, "failed", queue_ms=8.0, prompt_tokens=7, output_tokens=0,
                             error_code="backend_timeout"),
        RequestSpecification("f3", 1, 21, TREATMENT, "failed", queue_ms=9.0, prompt_tokens=8, output_tokens=2,
                             error_code="backend_error"),
        RequestSpecification("x1", 0, 30, TREATMENT, "cancelled", queue_ms=5.0, prompt_tokens=6, output_tokens=4,
                             cancel_reason="client_request"),
        RequestSpecification("x2", 1, 30, CONTROL, "cancelled", queue_ms=5.0, prompt_tokens=5, output_tokens=1,
                             cancel_reason="client_disconnected"),
        RequestSpecification("b1", 0, 40, None, "screen_blocked", screening_blocked_by="PromptInjection",
                             screening_scores={"PromptInjection": 0.9375, "Toxicity": 0.0}),
        # PromptInjection blocks too, but Toxicity ran first, so only Toxicity counts a block.
        RequestSpecification("b2", 1, 40, None, "screen_blocked", screening_blocked_by="Toxicity",
                             screening_scores={"PromptInjection": 0.875, "Toxicity": 0.75},
                             screening_actions={"PromptInjection": "block"}),
    ]


def request_events(tenant: str, start: datetime, spec: RequestSpecification) -> list[Envelope]:
    """Return the signal-carrying events of one request, a few milliseconds apart in its minute."""
    at = start + timedelta(hours=spec.bucket, minutes=spec.minute)
    events: list[Envelope] = []

    def add(event_type: EventType, payload: object, offset_ms: float) -> None:
        events.append(
            Envelope(
                event_id=derive_event_id(tenant, spec.request_id, event_type),
                type=event_type,
                request_id=spec.request_id,
                tenant=tenant,
                ts=at + timedelta(milliseconds=offset_ms),
                payload=payload.model_dump(mode="json"),  # type: ignore[attr-defined]
            )
        )

    add(EventType.ACCEPTED, AcceptedPayload(request=REQUEST, prompt_chars=5), 0)
    add(EventType.SCREENED, _screened(spec), 10)
    if spec.variant is None:
        return events
    variant_key, model = spec.variant
    variant = VariantSpec(key=variant_key, backend="local", model=model)
    add(EventType.ASSIGNED, AssignedPayload(request=REQUEST, experiment_key="exp", variant=variant, hash_attribute="request_id"), 20)
    stats = GenerationStats(
        backend="local",
        prompt_tokens=spec.prompt_tokens,
        completion_tokens=spec.output_tokens,
        queue_ms=spec.queue_ms,
        ttft_ms=spec.ttft_ms if spec.outcome == "completed" else None,
        finish_reason={"completed": "stop", "failed": "error", "cancelled": "cancelled"}[spec.outcome],
    )
    if spec.outcome == "failed":
        add(EventType.FAILED, FailedPayload(stage="inference", error_code=spec.error_code, message="failed", stats=stats), 30)
    elif spec.outcome == "cancelled":
        add(EventType.CANCELLED, CancelledPayload(stage="inference", reason=spec.cancel_reason, stats=stats), 30)
    else:
        usage = Usage(prompt_tokens=spec.prompt_tokens, completion_tokens=spec.output_tokens)
        completed = CompletedPayload(
            variant_key=variant_key, backend="local", attempt=0, text="hi", finish_reason="stop",
            usage=usage, generation_ms=spec.generation_ms, stats=stats,
        )
        add(EventType.COMPLETED, completed, 30)
        add(EventType.MODERATED, _moderated(spec), 40)
    return events


def _scanners(
    scores: dict[str, float], blocked_by: str | None, actions: dict[str, ScannerAction]
) -> list[ScannerResult]:
    results = []
    for name, score in scores.items():
        action: ScannerAction | None = "block" if name == blocked_by else actions.get(name)
        # A redacting scanner found the text valid, and a blocking or flagging one found it invalid.
        valid = action in (None, "redact")
        results.append(ScannerResult(scanner=name, valid=valid, risk_score=score, duration_ms=1.0, action=action))
    return results


def _screened(spec: RequestSpecification) -> ScreenedPayload:
    verdict = Verdict.BLOCKED if spec.screening_blocked_by else Verdict.PASSED
    scanners = _scanners(spec.screening_scores, spec.screening_blocked_by, spec.screening_actions)
    return ScreenedPayload(request=REQUEST, verdict=verdict, scanners=scanners, blocked_by=spec.screening_blocked_by)


def _moderated(spec: RequestSpecification) -> ModeratedPayload:
    verdict = Verdict.BLOCKED if spec.moderation_blocked_by else Verdict.PASSED
    scanners = _scanners(spec.moderation_scores, spec.moderation_blocked_by, spec.moderation_actions)
    return ModeratedPayload(verdict=verdict, scanners=scanners, blocked_by=spec.moderation_blocked_by, refusal=spec.refusal)

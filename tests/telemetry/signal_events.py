"""The events of one request from acceptance to delivery, for the signal tests."""

from __future__ import annotations

from datetime import datetime

from services.telemetry.rows import EventRow, decode_event
from services.telemetry.signals import SignalBuilder
from services.telemetry.store import EventStore
from services.telemetry.text_storage import TextStorage
from shared.events import (
    AcceptedPayload,
    AssignedPayload,
    ChatMessage,
    CompletedPayload,
    DeliveredPayload,
    Envelope,
    EventType,
    FirstTokenPayload,
    GenerationStats,
    LatencyPercentiles,
    ModeratedPayload,
    RequestSpec,
    ScannerAction,
    ScannerResult,
    ScreenedPayload,
    Usage,
    VariantSpec,
    Verdict,
    new_envelope,
)

SYSTEM_PROMPT = "You are terse."
USER_PROMPT = "Write a haiku about rain"
# cl100k_base's token counts of the two messages: 4 and 6.
PROMPT_TOKENS_CL100K = 10
OUTPUT = "Rain taps the window"
ENDPOINT = "http://127.0.0.1:8080"


def accepted(request_id: str, *, tenant: str = "acme", prompt: str = USER_PROMPT, route: str | None = None) -> Envelope:
    messages = [ChatMessage(role="system", content=SYSTEM_PROMPT), ChatMessage(role="user", content=prompt)]
    request = RequestSpec(messages=messages, metadata={"app": "docs", "locale": "en"})
    payload = AcceptedPayload(request=request, prompt_chars=len(SYSTEM_PROMPT) + len(prompt))
    return new_envelope(EventType.ACCEPTED, request_id=request_id, tenant=tenant, payload=payload, route=route)


def request_events(request_id: str, *, tenant: str = "acme", ttft_ms: float = 42.25) -> list[Envelope]:
    """Return accepted, screened, assigned, first_token, completed, moderated and delivered, in that order."""
    first = accepted(request_id, tenant=tenant)
    request = first.parsed_payload().request
    scanners = [_scanner("PromptInjection", 0.125), _scanner("Toxicity", 0.0625)]
    variant = VariantSpec(key="small", backend="tgi", model="qwen-0.5b")
    stats = GenerationStats(
        backend="tgi",
        endpoint=ENDPOINT,
        prompt_tokens=12,
        completion_tokens=5,
        queue_ms=15.5,
        ttft_ms=ttft_ms,
        inter_token=LatencyPercentiles(p50_ms=20.0, p95_ms=30.0, p99_ms=35.0, max_ms=40.0),
        finish_reason="length",
    )
    usage = Usage(prompt_tokens=12, completion_tokens=5)
    moderation = [_scanner("Toxicity", 0.25), _scanner("NoRefusalLight", 1.0, action="flag")]
    return [
        first,
        first.follow_up(EventType.SCREENED, ScreenedPayload(request=request, verdict=Verdict.PASSED, scanners=scanners)),
        first.follow_up(
            EventType.ASSIGNED,
            AssignedPayload(request=request, experiment_key="exp-1", variant=variant, hash_attribute="request_id"),
        ),
        first.follow_up(
            EventType.FIRST_TOKEN, FirstTokenPayload(variant_key="small", backend="tgi", attempt=0, backend_ttft_ms=40.0)
        ),
        first.follow_up(
            EventType.COMPLETED,
            CompletedPayload(
                variant_key="small",
                backend="tgi",
                attempt=0,
                text=OUTPUT,
                finish_reason="length",
                usage=usage,
                generation_ms=250.0,
                stats=stats,
            ),
        ),
        first.follow_up(
            EventType.MODERATED, ModeratedPayload(verdict=Verdict.PASSED, scanners=moderation, refusal=True)
        ),
        first.follow_up(
            EventType.DELIVERED, DeliveredPayload(text=OUTPUT, finish_reason="length", chunks=2, usage=usage)
        ),
    ]


def at(envelope: Envelope, ts: datetime) -> Envelope:
    return envelope.model_copy(update={"ts": ts})


def rows(
    envelopes: list[Envelope], builder: SignalBuilder, text_storage: TextStorage | None = None
) -> list[EventRow]:
    return [decode_event(envelope.model_dump_json().encode(), text_storage, builder) for envelope in envelopes]


async def signal_rows(store: EventStore, sql_condition: str = "1", parameters: dict | None = None) -> list[dict]:
    """Return the rows of `request_signals FINAL` that match the condition, as dicts, ordered by ts."""
    sql = f"SELECT * FROM request_signals FINAL WHERE {sql_condition} ORDER BY ts"
    columns, result = await store.query(sql, parameters or {})
    return [dict(zip(columns, values)) for values in result]


def _scanner(name: str, risk_score: float, *, action: ScannerAction | None = None) -> ScannerResult:
    return ScannerResult(scanner=name, valid=risk_score < 0.5, risk_score=risk_score, duration_ms=1.0, action=action)

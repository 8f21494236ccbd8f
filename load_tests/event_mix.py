"""Realistic EVENTS messages in bulk: the seven events of delivered requests, ready to publish.

Each request template is built once with `shared.events`, as the services
build their events. A new request copies a template's serialised envelopes
and swaps in a fresh request id and the event ids derived from it. A
publisher can so produce hundreds of thousands of distinct, valid envelopes
without running pydantic's serialisation for each one.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from shared.events import (
    AcceptedPayload,
    AssignedPayload,
    ChatMessage,
    CompletedPayload,
    DeliveredPayload,
    Envelope,
    EventType,
    FirstTokenPayload,
    GenerationParams,
    ModeratedPayload,
    RequestSpec,
    ScannerResult,
    ScreenedPayload,
    Usage,
    VariantSpec,
    Verdict,
    derive_event_id,
    new_envelope,
)
from shared.subjects import envelope_subject

TENANTS = ("acme", "globex", "initech", "umbrella")
# A short question, a prompt with some context and one with a pasted document.
PROMPT_CHARS = (200, 800, 2_000)
# Output lengths alternate between these across templates.
OUTPUT_CHARS = (300, 1_200)
# Four characters make about one token of English.
CHARS_PER_TOKEN = 4
# A streamed chunk carries a few tokens. Only the chunk count in the
# delivered event depends on it.
CHARS_PER_CHUNK = 16
# Generation runs once per JetStream delivery, numbered from 1.
ATTEMPT = 1

_FILLER = (
    "The committee reviewed the quarterly figures, compared them with last year's plan, "
    "and asked for a short summary of the risks before the next meeting. "
)
_INPUT_SCANNERS = ("InvisibleText", "Secrets", "BanSubstrings", "PrivateKey", "TokenLimit")
_OUTPUT_SCANNERS = ("BanSubstrings", "PrivateKey", "AwsAccessKey", "NoRefusalLight")


@dataclass(frozen=True)
class EventMessage:
    """One message ready for JetStream: subject, serialised envelope and the `Nats-Msg-Id` header value."""

    subject: str
    body: bytes
    event_id: str


@dataclass(frozen=True)
class _TemplateEvent:
    event_type: EventType
    attempt: int
    subject: str
    body: bytes
    event_id: bytes


@dataclass(frozen=True)
class RequestTemplate:
    """The serialised events of one delivered request, with the ids that each copy replaces."""

    tenant: str
    request_id: bytes
    events: tuple[_TemplateEvent, ...]

    def copy_for(self, request_id: str) -> list[EventMessage]:
        """Return this request's events with `request_id` and the event ids derived from it."""
        new_request_id = request_id.encode()
        messages = []
        for event in self.events:
            event_id = derive_event_id(self.tenant, request_id, event.event_type, event.attempt)
            body = event.body.replace(self.request_id, new_request_id).replace(event.event_id, event_id.encode())
            messages.append(EventMessage(event.subject, body, event_id))
        return messages


def _text(chars: int) -> str:
    return (_FILLER * (chars // len(_FILLER) + 1))[:chars]


def _scanner_results(names: tuple[str, ...]) -> list[ScannerResult]:
    return [ScannerResult(scanner=name, valid=True, risk_score=0.0, duration_ms=0.05) for name in names]


def _request_spec(prompt_chars: int) -> RequestSpec:
    return RequestSpec(
        messages=[ChatMessage(role="user", content=_text(prompt_chars))],
        params=GenerationParams(max_new_tokens=256, temperature=0.7),
        user_id="user-1",
    )


def _routing_payloads(request: RequestSpec) -> tuple[ScreenedPayload, AssignedPayload]:
    screened = ScreenedPayload(request=request, verdict=Verdict.PASSED, scanners=_scanner_results(_INPUT_SCANNERS))
    variant = VariantSpec(key="control", backend="local", model="tinyshakespeare-llama")
    assigned = AssignedPayload(
        request=request, experiment_key="temperature", variant=variant, hash_value=0.42, hash_attribute="user_id"
    )
    return screened, assigned


def _generation_payloads(
    prompt_chars: int, output_chars: int
) -> tuple[FirstTokenPayload, CompletedPayload, DeliveredPayload]:
    output = _text(output_chars)
    usage = Usage(prompt_tokens=prompt_chars // CHARS_PER_TOKEN, completion_tokens=output_chars // CHARS_PER_TOKEN)
    first_token = FirstTokenPayload(variant_key="control", backend="local", attempt=ATTEMPT, backend_ttft_ms=8.0)
    completed = CompletedPayload(
        variant_key="control",
        backend="local",
        attempt=ATTEMPT,
        text=output,
        finish_reason="length",
        usage=usage,
        generation_ms=900.0,
    )
    chunks = output_chars // CHARS_PER_CHUNK
    delivered = DeliveredPayload(text=output, finish_reason="length", chunks=chunks, usage=usage)
    return first_token, completed, delivered


def delivered_request_events(tenant: str, prompt_chars: int, output_chars: int) -> list[tuple[Envelope, int]]:
    """Build the events of one delivered request, each with its generation attempt (0 where it has none)."""
    request = _request_spec(prompt_chars)
    accepted = new_envelope(
        EventType.ACCEPTED,
        request_id=str(uuid.uuid4()),
        tenant=tenant,
        payload=AcceptedPayload(request=request, prompt_chars=prompt_chars),
    )
    screened, assigned = _routing_payloads(request)
    first_token, completed, delivered = _generation_payloads(prompt_chars, output_chars)
    moderated = ModeratedPayload(verdict=Verdict.PASSED, scanners=_scanner_results(_OUTPUT_SCANNERS))

    return [
        (accepted, 0),
        (accepted.follow_up(EventType.SCREENED, screened), 0),
        (accepted.follow_up(EventType.ASSIGNED, assigned), 0),
        (accepted.follow_up(EventType.FIRST_TOKEN, first_token, attempt=ATTEMPT), ATTEMPT),
        (accepted.follow_up(EventType.COMPLETED, completed, attempt=ATTEMPT), ATTEMPT),
        (accepted.follow_up(EventType.MODERATED, moderated), 0),
        (accepted.follow_up(EventType.DELIVERED, delivered), 0),
    ]


def build_template(tenant: str, prompt_chars: int, output_chars: int) -> RequestTemplate:
    events = delivered_request_events(tenant, prompt_chars, output_chars)
    template_events = tuple(
        _TemplateEvent(
            event_type=envelope.type,
            attempt=attempt,
            subject=envelope_subject(envelope),
            body=envelope.model_dump_json().encode(),
            event_id=envelope.event_id.encode(),
        )
        for envelope, attempt in events
    )
    return RequestTemplate(tenant=tenant, request_id=events[0][0].request_id.encode(), events=template_events)


def request_templates() -> list[RequestTemplate]:
    """Build one template per tenant and prompt size, alternating the output size."""
    combinations = itertools.product(TENANTS, PROMPT_CHARS)
    output_sizes = itertools.cycle(OUTPUT_CHARS)
    return [build_template(tenant, prompt, next(output_sizes)) for tenant, prompt in combinations]


def event_messages(templates: list[RequestTemplate], count: int) -> Iterator[EventMessage]:
    """Yield `count` messages: whole requests in template order, the last one cut short if needed.

    Every message has a new request id, so no two share an event id.
    """
    produced = 0
    for template in itertools.cycle(templates):
        for message in template.copy_for(str(uuid.uuid4())):
            if produced == count:
                return
            yield message
            produced += 1


def mean_body_bytes(templates: list[RequestTemplate]) -> float:
    """Return the mean serialised envelope size over every event of `templates`."""
    sizes = [len(event.body) for template in templates for event in template.events]
    return sum(sizes) / len(sizes)

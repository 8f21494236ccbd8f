"""Trace context on published envelopes: one new span per publish, in the NATS headers and the envelope."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from faststream.nats import NatsBroker

from shared.bus import EventPublisher, ensure_jetstream, make_broker
from shared.events import (
    AcceptedPayload,
    ChatMessage,
    Envelope,
    EventType,
    RequestSpec,
    ScreenedPayload,
    Verdict,
    decode_envelope,
)
from shared.subjects import EVENTS_STREAM, envelope_subject
from tests.support.envelopes import new_request_envelope

pytestmark = pytest.mark.nats

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN_ID}-01"


@pytest.fixture
async def broker(nats_url: str) -> AsyncIterator[NatsBroker]:
    broker = make_broker(nats_url)
    connection = await broker.connect()
    await ensure_jetstream(connection.jetstream())
    yield broker
    await broker.stop()


def _accepted(trace: dict[str, str]) -> Envelope:
    request = RequestSpec(messages=[ChatMessage(role="user", content="Hello")])
    payload = AcceptedPayload(request=request, prompt_chars=5)
    envelope = new_request_envelope(EventType.ACCEPTED, payload, tenant="acme", deadline_in_s=None)
    return envelope.model_copy(update={"trace": trace})


async def _stored(broker: NatsBroker, subject: str) -> tuple[dict[str, str], Envelope]:
    """Return the headers and the envelope of the last message stored on `subject`."""
    message = await broker.connection.jetstream().get_last_msg(EVENTS_STREAM, subject)
    return message.headers or {}, decode_envelope(message.data)


async def test_publish_sends_traceparent_header(broker: NatsBroker) -> None:
    envelope = _accepted({"traceparent": TRACEPARENT, "tracestate": "vendor=1"})

    await EventPublisher(broker).publish(envelope)

    headers, stored = await _stored(broker, envelope_subject(envelope))
    assert headers["traceparent"] == stored.trace["traceparent"]
    assert headers["tracestate"] == "vendor=1"
    assert headers["Nats-Msg-Id"] == envelope.event_id


async def test_publish_starts_child_span(broker: NatsBroker) -> None:
    envelope = _accepted({"traceparent": TRACEPARENT})

    await EventPublisher(broker).publish(envelope)

    _, stored = await _stored(broker, envelope_subject(envelope))
    assert stored.trace["trace_id"] == TRACE_ID
    assert stored.trace["parent_span_id"] == CLIENT_SPAN_ID
    assert stored.trace["span_id"] not in (CLIENT_SPAN_ID, "0" * 16)
    # The caller's envelope keeps the parent's context.
    assert envelope.trace == {"traceparent": TRACEPARENT}


async def test_follow_up_is_child_of_published_span(broker: NatsBroker) -> None:
    publisher = EventPublisher(broker)
    accepted = _accepted({"traceparent": TRACEPARENT})
    await publisher.publish(accepted)
    _, stored_accepted = await _stored(broker, envelope_subject(accepted))

    screened = stored_accepted.follow_up(
        EventType.SCREENED, ScreenedPayload(request=accepted.parsed_payload().request, verdict=Verdict.PASSED, scanners=[])
    )
    await publisher.publish(screened)

    _, stored_screened = await _stored(broker, envelope_subject(screened))
    assert stored_screened.trace["trace_id"] == TRACE_ID
    assert stored_screened.trace["parent_span_id"] == stored_accepted.trace["span_id"]


async def test_untraced_envelope_starts_trace(broker: NatsBroker) -> None:
    envelope = _accepted({})

    await EventPublisher(broker).publish(envelope)

    headers, stored = await _stored(broker, envelope_subject(envelope))
    assert len(stored.trace["trace_id"]) == 32
    assert "parent_span_id" not in stored.trace
    assert headers["traceparent"] == stored.trace["traceparent"]
    assert "tracestate" not in headers

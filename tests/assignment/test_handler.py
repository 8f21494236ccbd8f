"""The assignment service on a real nats-server: what it publishes for each kind of screened request."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

import nats.errors
import pytest
from nats.js import JetStreamContext

from services.assignment.hashing import hash_unit
from shared.bus import ensure_jetstream
from shared.events import (
    ChatMessage,
    Envelope,
    EventType,
    GenerationParams,
    RequestSpec,
    ScreenedPayload,
    Verdict,
    decode_envelope,
    new_envelope,
    utc_now,
)
from shared.subjects import ASSIGNMENT_CONSUMER, EVENTS_STREAM, event_subject

pytestmark = pytest.mark.nats

WAIT_S = 10.0


def _screened(
    *,
    user_id: str | None = "alice",
    verdict: Verdict = Verdict.PASSED,
    params: GenerationParams | None = None,
    deadline_in_s: float = 60.0,
) -> Envelope:
    request = RequestSpec(
        messages=[ChatMessage(role="user", content="Good morrow.")],
        params=params or GenerationParams(),
        user_id=user_id,
    )
    payload = ScreenedPayload(request=request, verdict=verdict, scanners=[])
    return new_envelope(
        EventType.SCREENED,
        request_id=str(uuid.uuid4()),
        tenant="acme",
        payload=payload,
        deadline=utc_now() + timedelta(seconds=deadline_in_s),
    )


async def _publish(jetstream: JetStreamContext, envelope: Envelope) -> None:
    await jetstream.publish(
        event_subject(envelope.type), envelope.model_dump_json().encode(), headers={"Nats-Msg-Id": envelope.event_id}
    )


async def _wait_for(jetstream: JetStreamContext, event_type: EventType, request_id: str) -> Envelope:
    subscription = await jetstream.subscribe(event_subject(event_type), ordered_consumer=True)
    deadline = time.monotonic() + WAIT_S
    try:
        while True:
            msg = await subscription.next_msg(timeout=max(deadline - time.monotonic(), 0.01))
            envelope = decode_envelope(msg.data)
            if envelope.request_id == request_id:
                return envelope
    finally:
        await subscription.unsubscribe()


async def _request_ids(jetstream: JetStreamContext, event_type: EventType) -> set[str]:
    subscription = await jetstream.subscribe(event_subject(event_type), ordered_consumer=True)
    request_ids: set[str] = set()
    try:
        while True:
            msg = await subscription.next_msg(timeout=0.5)
            request_ids.add(decode_envelope(msg.data).request_id)
    except nats.errors.TimeoutError:
        return request_ids
    finally:
        await subscription.unsubscribe()


async def _wait_until_settled(jetstream: JetStreamContext, stream_sequence: int) -> None:
    """Wait until the consumer has handled every message up to `stream_sequence`."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        info = await jetstream.consumer_info(EVENTS_STREAM, ASSIGNMENT_CONSUMER.durable)
        if info.ack_floor.stream_seq >= stream_sequence or (
            info.delivered.stream_seq >= stream_sequence and info.num_ack_pending == 0
        ):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the assignment consumer did not settle stream sequence {stream_sequence}")


async def test_screened_request_gets_assigned(jetstream: JetStreamContext) -> None:
    screened = _screened(params=GenerationParams(max_new_tokens=16))

    await _publish(jetstream, screened)
    assigned = await _wait_for(jetstream, EventType.ASSIGNED, screened.request_id)

    payload = assigned.parsed_payload()
    assert payload.experiment_key == "sampling-temperature"
    assert payload.variant.key in {"control", "cooler"}
    assert payload.variant.backend == "embedded"
    assert payload.variant.params.max_new_tokens == 16
    assert payload.hash_attribute == "user_id"
    assert payload.hash_value == hash_unit("sampling-temperature", "alice", 2)
    assert payload.request == screened.parsed_payload().request
    assert assigned.tenant == "acme"
    assert assigned.deadline == screened.deadline


async def test_same_user_same_variant(jetstream: JetStreamContext) -> None:
    first, second = _screened(user_id="bob"), _screened(user_id="bob")

    await _publish(jetstream, first)
    await _publish(jetstream, second)
    first_variant = (await _wait_for(jetstream, EventType.ASSIGNED, first.request_id)).parsed_payload().variant
    second_variant = (await _wait_for(jetstream, EventType.ASSIGNED, second.request_id)).parsed_payload().variant

    assert first_variant == second_variant


async def test_anonymous_request_hashes_request_id(jetstream: JetStreamContext) -> None:
    screened = _screened(user_id=None)

    await _publish(jetstream, screened)
    payload = (await _wait_for(jetstream, EventType.ASSIGNED, screened.request_id)).parsed_payload()

    assert payload.hash_attribute == "request_id"
    assert payload.hash_value == hash_unit("sampling-temperature", screened.request_id, 2)


async def test_blocked_request_not_assigned(jetstream: JetStreamContext) -> None:
    blocked, passed = _screened(verdict=Verdict.BLOCKED), _screened()

    await _publish(jetstream, blocked)
    await _publish(jetstream, passed)
    await _wait_for(jetstream, EventType.ASSIGNED, passed.request_id)

    assert blocked.request_id not in await _request_ids(jetstream, EventType.ASSIGNED)


async def test_expired_request_published_expired(jetstream: JetStreamContext) -> None:
    screened = _screened(deadline_in_s=-1.0)

    await _publish(jetstream, screened)
    expired = await _wait_for(jetstream, EventType.EXPIRED, screened.request_id)

    payload = expired.parsed_payload()
    assert payload.stage == "assignment"
    assert payload.deadline == screened.deadline
    assert screened.request_id not in await _request_ids(jetstream, EventType.ASSIGNED)


async def test_malformed_message_terminated(jetstream: JetStreamContext) -> None:
    ack = await jetstream.publish(event_subject(EventType.SCREENED), b"{not an envelope")

    await _wait_until_settled(jetstream, ack.seq)

    info = await jetstream.consumer_info(EVENTS_STREAM, ASSIGNMENT_CONSUMER.durable)
    assert info.num_ack_pending == 0
    assert info.num_redelivered == 0


async def test_publish_failure_redelivers(jetstream: JetStreamContext) -> None:
    stream = await jetstream.stream_info(EVENTS_STREAM)
    narrowed = stream.config
    narrowed.subjects = [event_subject(EventType.SCREENED)]
    await jetstream.update_stream(narrowed)
    screened = _screened()

    try:
        await _publish(jetstream, screened)
        # With request.assigned outside every stream, the publish fails and the message is nacked.
        await _wait_for_redelivery(jetstream)
    finally:
        await ensure_jetstream(jetstream)

    assigned = await _wait_for(jetstream, EventType.ASSIGNED, screened.request_id)
    assert assigned.parsed_payload().variant.key in {"control", "cooler"}


async def _wait_for_redelivery(jetstream: JetStreamContext) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        info = await jetstream.consumer_info(EVENTS_STREAM, ASSIGNMENT_CONSUMER.durable)
        if info.num_redelivered > 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the assignment consumer never redelivered the message")

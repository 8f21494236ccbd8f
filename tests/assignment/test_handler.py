"""The assignment service on a real nats-server: what it publishes for each kind of screened request."""

from __future__ import annotations

import asyncio
import time
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
)
from services.assignment.handler import INVALID_SUBJECT_TOKEN
from shared.subjects import ASSIGNMENT_CONSUMER, EVENTS_STREAM, assigned_subject, event_filter, event_subject
from tests.support.envelopes import new_request_envelope
from tests.support.jetstream import publish_envelope, published_events, wait_for_event, wait_until_settled
from tests.support.metrics import sample_value, scrape, scrape_when

pytestmark = pytest.mark.nats

WAIT_S = 10.0


def _screened(
    *,
    user_id: str | None = "alice",
    verdict: Verdict = Verdict.PASSED,
    params: GenerationParams | None = None,
    deadline_in_s: float = 60.0,
    tenant: str = "acme",
) -> Envelope:
    request = RequestSpec(
        messages=[ChatMessage(role="user", content="Good morrow.")],
        params=params or GenerationParams(),
        user_id=user_id,
    )
    payload = ScreenedPayload(request=request, verdict=verdict, scanners=[])
    return new_request_envelope(EventType.SCREENED, payload, tenant=tenant, deadline_in_s=deadline_in_s)


async def _request_ids(jetstream: JetStreamContext, event_type: EventType) -> set[str]:
    return {envelope.request_id for envelope in await published_events(jetstream, event_filter(event_type))}


async def test_screened_request_gets_assigned(jetstream: JetStreamContext) -> None:
    screened = _screened(params=GenerationParams(max_new_tokens=16))

    await publish_envelope(jetstream, screened)
    assigned = await wait_for_event(jetstream, EventType.ASSIGNED, screened.request_id, WAIT_S)

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


async def test_assigned_published_on_pool_queue(jetstream: JetStreamContext) -> None:
    screened = _screened()

    await publish_envelope(jetstream, screened)
    await wait_for_event(jetstream, EventType.ASSIGNED, screened.request_id, WAIT_S)

    on_queue_subject = await published_events(jetstream, assigned_subject("embedded", "acme"))
    assert screened.request_id in {envelope.request_id for envelope in on_queue_subject}
    assert screened.request_id not in await _request_ids(jetstream, EventType.FAILED)


async def test_invalid_tenant_name_fails(jetstream: JetStreamContext) -> None:
    screened = _screened(tenant="acme.west")

    await publish_envelope(jetstream, screened)
    failed = await wait_for_event(jetstream, EventType.FAILED, screened.request_id, WAIT_S)

    payload = failed.parsed_payload()
    assert payload.stage == "assignment"
    assert payload.error_code == INVALID_SUBJECT_TOKEN
    assert "'acme.west'" in payload.message
    assert screened.request_id not in await _request_ids(jetstream, EventType.ASSIGNED)


async def test_same_user_same_variant(jetstream: JetStreamContext) -> None:
    first, second = _screened(user_id="bob"), _screened(user_id="bob")

    await publish_envelope(jetstream, first)
    await publish_envelope(jetstream, second)
    first_assigned = await wait_for_event(jetstream, EventType.ASSIGNED, first.request_id, WAIT_S)
    second_assigned = await wait_for_event(jetstream, EventType.ASSIGNED, second.request_id, WAIT_S)
    first_variant = first_assigned.parsed_payload().variant
    second_variant = second_assigned.parsed_payload().variant

    assert first_variant == second_variant


async def test_anonymous_request_hashes_request_id(jetstream: JetStreamContext) -> None:
    screened = _screened(user_id=None)

    await publish_envelope(jetstream, screened)
    payload = (await wait_for_event(jetstream, EventType.ASSIGNED, screened.request_id, WAIT_S)).parsed_payload()

    assert payload.hash_attribute == "request_id"
    assert payload.hash_value == hash_unit("sampling-temperature", screened.request_id, 2)


async def test_blocked_request_not_assigned(jetstream: JetStreamContext) -> None:
    blocked, passed = _screened(verdict=Verdict.BLOCKED), _screened()

    await publish_envelope(jetstream, blocked)
    await publish_envelope(jetstream, passed)
    await wait_for_event(jetstream, EventType.ASSIGNED, passed.request_id, WAIT_S)

    assert blocked.request_id not in await _request_ids(jetstream, EventType.ASSIGNED)


async def test_expired_request_published_expired(jetstream: JetStreamContext) -> None:
    screened = _screened(deadline_in_s=-1.0)

    await publish_envelope(jetstream, screened)
    expired = await wait_for_event(jetstream, EventType.EXPIRED, screened.request_id, WAIT_S)

    payload = expired.parsed_payload()
    assert payload.stage == "assignment"
    assert payload.deadline == screened.deadline
    assert screened.request_id not in await _request_ids(jetstream, EventType.ASSIGNED)


async def test_malformed_message_terminated(jetstream: JetStreamContext) -> None:
    ack = await jetstream.publish(event_subject(EventType.SCREENED), b"{not an envelope")

    info = await wait_until_settled(jetstream, ASSIGNMENT_CONSUMER, ack.seq, WAIT_S)

    assert info.num_ack_pending == 0
    assert info.num_redelivered == 0


async def test_publish_failure_redelivers(jetstream: JetStreamContext) -> None:
    stream = await jetstream.stream_info(EVENTS_STREAM)
    narrowed = stream.config
    narrowed.subjects = [event_subject(EventType.SCREENED)]
    await jetstream.update_stream(narrowed)
    screened = _screened()

    try:
        await publish_envelope(jetstream, screened)
        # With request.assigned outside every stream, the publish fails and the message is nacked.
        await _wait_for_redelivery(jetstream)
    finally:
        await ensure_jetstream(jetstream)

    assigned = await wait_for_event(jetstream, EventType.ASSIGNED, screened.request_id, WAIT_S)
    assert assigned.parsed_payload().variant.key in {"control", "cooler"}


async def _wait_for_redelivery(jetstream: JetStreamContext) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        info = await jetstream.consumer_info(EVENTS_STREAM, ASSIGNMENT_CONSUMER.durable)
        if info.num_redelivered > 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the assignment consumer never redelivered the message")


async def test_assignment_counted(jetstream: JetStreamContext, metrics_port: int) -> None:
    name = "sluice_assignment_assignments_total"
    before = await scrape(metrics_port)
    screened = _screened()

    await publish_envelope(jetstream, screened)
    assigned = await wait_for_event(jetstream, EventType.ASSIGNED, screened.request_id, WAIT_S)

    variant = assigned.parsed_payload().variant.key
    labels = {"experiment": "sampling-temperature", "variant": variant}
    expected = (sample_value(before, name, **labels) or 0) + 1
    after = await scrape_when(metrics_port, name, expected, WAIT_S, **labels)
    assert sample_value(after, name, **labels) == expected

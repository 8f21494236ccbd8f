"""Handling JetStream deliveries of envelopes: decoding, rejection, expiry, retry and log context."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import structlog
from faststream import TestApp
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import BaseModel, ValidationError
from structlog.testing import capture_logs

from shared.bus import EventPublisher, make_broker
from shared.consuming import (
    RETRY_DELAY_S,
    EnvelopeHandler,
    MalformedMessage,
    decode_event,
    decode_message,
    describe_validation_error,
    expired_event,
    publish_if_expired,
)
from shared.events import (
    AcceptedPayload,
    ChatMessage,
    Envelope,
    EventType,
    ExpiredPayload,
    RequestSpec,
)
from shared.pulling import ConcurrentPuller
from shared.service import build_app
from shared.settings import Settings
from shared.subjects import SAFETY_CONSUMER, event_subject
from tests.support.envelopes import new_request_envelope
from tests.support.jetstream import (
    jetstream_client,
    private_nats,
    publish_envelope,
    wait_for_event,
    wait_for_log,
    wait_until_settled,
)

SECRET_PROMPT = "my password is hunter2"
STAGE = "consuming-test"
WAIT_S = 10.0


def _accepted(content: str = "Hello", deadline_in_s: float | None = 60.0) -> Envelope:
    request = RequestSpec(messages=[ChatMessage(role="user", content=content)])
    payload = AcceptedPayload(request=request, prompt_chars=len(content))
    return new_request_envelope(EventType.ACCEPTED, payload, tenant="acme", deadline_in_s=deadline_in_s)


def _body(envelope: Envelope) -> bytes:
    return envelope.model_dump_json().encode()


def test_decode_event_returns_typed_payload() -> None:
    envelope = _accepted()

    decoded, payload = decode_event(_body(envelope), (EventType.ACCEPTED,))

    assert decoded == envelope
    assert isinstance(payload, AcceptedPayload)
    assert payload.request.messages[0].content == "Hello"


def test_non_json_rejected() -> None:
    with pytest.raises(MalformedMessage) as caught:
        decode_message(b"not json at all")

    assert str(caught.value) == "invalid envelope at (top level) (json_invalid)"


def test_missing_fields_named() -> None:
    data = json.loads(_body(_accepted()))
    del data["tenant"]
    del data["ts"]

    with pytest.raises(MalformedMessage) as caught:
        decode_message(json.dumps(data).encode())

    assert str(caught.value) == "invalid envelope at tenant (missing), ts (missing)"


def test_unsupported_version_rejected() -> None:
    data = json.loads(_body(_accepted()))
    data["schema_version"] = 99

    with pytest.raises(MalformedMessage) as caught:
        decode_message(json.dumps(data).encode())

    assert "schema_version 99" in str(caught.value)


def test_wrong_type_names_expected() -> None:
    envelope = _accepted()

    with pytest.raises(MalformedMessage) as caught:
        decode_event(_body(envelope), (EventType.CHUNK, EventType.END))

    expected = f"event {envelope.event_id} has type request.accepted, expected generation.chunk or generation.end"
    assert str(caught.value) == expected


def test_invalid_payload_hides_prompt() -> None:
    data = json.loads(_body(_accepted(SECRET_PROMPT)))
    data["payload"]["request"]["messages"][0]["role"] = "narrator"

    with pytest.raises(MalformedMessage) as caught:
        decode_event(json.dumps(data).encode(), (EventType.ACCEPTED,))

    assert "has an invalid payload at request.messages.0.role (literal_error)" in str(caught.value)
    assert SECRET_PROMPT not in str(caught.value)


def test_validation_error_omits_input() -> None:
    class Model(BaseModel):
        count: int

    with pytest.raises(ValidationError) as caught:
        Model.model_validate({"count": SECRET_PROMPT})

    assert describe_validation_error(caught.value) == "count (int_parsing)"


def test_envelope_in_time_not_expired() -> None:
    assert expired_event(_accepted(deadline_in_s=60.0), STAGE) is None


def test_envelope_without_deadline_not_expired() -> None:
    assert expired_event(_accepted(deadline_in_s=None), STAGE) is None


def test_late_envelope_gets_expired_event() -> None:
    envelope = _accepted(deadline_in_s=-1.0)

    with capture_logs() as logs:
        expired = expired_event(envelope, STAGE)

    assert expired is not None
    assert expired.type is EventType.EXPIRED
    assert expired.request_id == envelope.request_id
    assert expired.parsed_payload() == ExpiredPayload(stage=STAGE, deadline=envelope.deadline)
    assert logs == [
        {
            "event": "request_expired",
            "log_level": "info",
            "request_id": envelope.request_id,
            "tenant": "acme",
            "deadline": envelope.deadline.isoformat(),
        }
    ]


class RecordingHandler(EnvelopeHandler):
    """Publishes `request.expired` for late envelopes and records the log context of every processed delivery.

    The first delivery of a request id in `fail_once` raises `OSError`, one of the default retry errors.
    """

    stage = STAGE
    event_types = (EventType.ACCEPTED,)
    retry_event = "test_work_failed"

    def __init__(self, publisher: EventPublisher) -> None:
        self._publisher = publisher
        self.contexts: list[dict[str, Any]] = []
        self.fail_once: set[str] = set()

    def log_context(self, msg: Msg) -> dict[str, Any]:
        return {"delivery": msg.metadata.num_delivered}

    async def process(self, msg: Msg, envelope: Envelope, payload: AcceptedPayload) -> None:
        self.contexts.append(structlog.contextvars.get_contextvars())
        if envelope.request_id in self.fail_once:
            self.fail_once.discard(envelope.request_id)
            raise OSError("connection reset while publishing")
        await publish_if_expired(self._publisher, envelope, self.stage)


@pytest.fixture(scope="module")
def bus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private nats-server: the malformed messages these tests publish must not reach other tests' consumers."""
    with private_nats(tmp_path_factory, "consuming-nats") as url:
        yield url


@pytest.fixture(scope="module")
async def handler(bus_url: str) -> AsyncIterator[RecordingHandler]:
    """A `RecordingHandler` bound to the durable consumer of `request.accepted`, running until the module ends."""
    broker = make_broker(bus_url)
    recording = RecordingHandler(EventPublisher(broker))

    puller = ConcurrentPuller(SAFETY_CONSUMER, recording.handle, max_in_flight=4)
    async with TestApp(build_app(STAGE, broker, Settings(nats_url=bus_url), pullers=[puller])):
        yield recording


@pytest.fixture(scope="module")
async def jetstream(bus_url: str, handler: RecordingHandler) -> AsyncIterator[JetStreamContext]:
    async with jetstream_client(bus_url) as client:
        yield client


@pytest.mark.nats
async def test_malformed_message_rejected(jetstream: JetStreamContext) -> None:
    with capture_logs() as logs:
        ack = await jetstream.publish(event_subject(EventType.ACCEPTED), b"{not an envelope")
        rejected = await wait_for_log(logs, "message_rejected", WAIT_S)
    info = await wait_until_settled(jetstream, SAFETY_CONSUMER, ack.seq, WAIT_S)

    assert len(rejected) == 1
    assert rejected[0]["log_level"] == "error"
    assert rejected[0]["stage"] == STAGE
    assert rejected[0]["error"].startswith("invalid envelope at ")
    # Terminated, so JetStream neither keeps it pending nor redelivers it.
    assert info.num_ack_pending == 0
    assert info.num_redelivered == 0


@pytest.mark.nats
async def test_late_envelope_published_expired(jetstream: JetStreamContext, handler: RecordingHandler) -> None:
    envelope = _accepted(deadline_in_s=-1.0)

    await publish_envelope(jetstream, envelope)
    expired = await wait_for_event(jetstream, EventType.EXPIRED, envelope.request_id, WAIT_S)

    assert expired.parsed_payload() == ExpiredPayload(stage=STAGE, deadline=envelope.deadline)
    assert expired.tenant == envelope.tenant


@pytest.mark.nats
async def test_request_context_bound(jetstream: JetStreamContext, handler: RecordingHandler) -> None:
    envelope = _accepted()

    await publish_envelope(jetstream, envelope)
    context = await _wait_for_context(handler, lambda entry: entry.get("request_id") == envelope.request_id)

    assert context == {"request_id": envelope.request_id, "tenant": "acme", "delivery": 1}


@pytest.mark.nats
async def test_retry_error_redelivers_later(jetstream: JetStreamContext, handler: RecordingHandler) -> None:
    envelope = _accepted()
    handler.fail_once.add(envelope.request_id)

    with capture_logs() as logs:
        started = time.monotonic()
        ack = await jetstream.publish(event_subject(EventType.ACCEPTED), _body(envelope))
        redelivered = await _wait_for_context(
            handler, lambda entry: entry.get("request_id") == envelope.request_id and entry["delivery"] == 2
        )
        elapsed_s = time.monotonic() - started
    failures = [entry for entry in logs if entry["event"] == "test_work_failed"]
    info = await wait_until_settled(jetstream, SAFETY_CONSUMER, ack.seq, WAIT_S)

    assert redelivered["delivery"] == 2
    assert elapsed_s >= RETRY_DELAY_S
    assert len(failures) == 1
    assert failures[0]["log_level"] == "warning"
    assert failures[0]["retry_delay_s"] == RETRY_DELAY_S
    assert "connection reset while publishing" in failures[0]["error"]
    assert info.num_ack_pending == 0


async def _wait_for_context(handler: RecordingHandler, matches: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        found = [context for context in handler.contexts if matches(context)]
        if found:
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no matching delivery was processed within {WAIT_S} s")

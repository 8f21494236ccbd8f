"""The safety service on a private nats-server: screened, blocked, expired and malformed messages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from faststream import TestApp
from nats.js import JetStreamContext
from structlog.testing import capture_logs

from services.safety.app import make_app
from shared.embedded.infrastructure import free_port, start_nats
from shared.events import Envelope, EventType, Verdict, decode_envelope
from shared.settings import Settings
from shared.subjects import EVENTS_STREAM, SAFETY_CONSUMER, event_subject
from tests.safety.support import accepted, user

pytestmark = pytest.mark.nats

WAIT_S = 30.0
HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def bus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private nats-server: the malformed message these tests publish must not reach other tests' readers."""
    directory = tmp_path_factory.mktemp("safety-nats")
    server = start_nats(HOST, free_port(), directory, directory / "logs")
    yield f"nats://{HOST}:{server.port}"
    server.stop()


@pytest.fixture(scope="module")
async def safety_service(bus_url: str, policy_file: Path) -> AsyncIterator[None]:
    async with TestApp(make_app(Settings(nats_url=bus_url, policy_file=policy_file))):
        yield


@pytest.fixture(scope="module")
async def jetstream(bus_url: str, safety_service: None) -> AsyncIterator[JetStreamContext]:
    client = await nats.connect(bus_url)
    yield client.jetstream()
    await client.close()


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


async def test_benign_request_screened(jetstream: JetStreamContext) -> None:
    envelope = accepted(user("Tell me a short story about a lighthouse."))

    await _publish(jetstream, envelope)
    screened = await _wait_for(jetstream, EventType.SCREENED, envelope.request_id)

    payload = screened.parsed_payload()
    assert payload.verdict is Verdict.PASSED
    assert payload.request == envelope.parsed_payload().request
    assert screened.deadline == envelope.deadline


async def test_secret_request_blocked(jetstream: JetStreamContext) -> None:
    envelope = accepted(user("Is AKIAIOSFODNN7EXAMPLE a valid key?"))

    await _publish(jetstream, envelope)
    screened = await _wait_for(jetstream, EventType.SCREENED, envelope.request_id)

    assert screened.parsed_payload().verdict is Verdict.BLOCKED
    assert screened.parsed_payload().blocked_by == "Secrets"


async def test_invisible_text_blocked(jetstream: JetStreamContext) -> None:
    envelope = accepted(user("Translate\u200b this"))

    await _publish(jetstream, envelope)
    screened = await _wait_for(jetstream, EventType.SCREENED, envelope.request_id)

    assert screened.parsed_payload().blocked_by == "InvisibleText"


async def test_late_request_expired(jetstream: JetStreamContext) -> None:
    envelope = accepted(user("Hello"), deadline_in_s=-5.0)

    await _publish(jetstream, envelope)
    expired = await _wait_for(jetstream, EventType.EXPIRED, envelope.request_id)

    assert expired.parsed_payload().stage == "safety"


async def test_malformed_message_terminated(jetstream: JetStreamContext) -> None:
    with capture_logs() as logs:
        await jetstream.publish(event_subject(EventType.ACCEPTED), b'{"not": "an envelope"}')
        deadline = time.monotonic() + WAIT_S
        while not any(entry["event"] == "message_rejected" for entry in logs) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    rejected = [entry for entry in logs if entry["event"] == "message_rejected"]
    assert rejected[0]["log_level"] == "error"
    assert rejected[0]["error"].startswith("invalid envelope at ")
    # Terminated, not left for redelivery: nothing of it stays pending on the consumer.
    assert await _ack_pending_drained(jetstream)


async def _ack_pending_drained(jetstream: JetStreamContext) -> bool:
    """Wait until the safety consumer has no unacknowledged message; a nacked one would stay pending."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        info = await jetstream.consumer_info(EVENTS_STREAM, SAFETY_CONSUMER.durable)
        if info.num_ack_pending == 0 and not info.num_redelivered:
            return True
        await asyncio.sleep(0.05)
    return False

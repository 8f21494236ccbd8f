"""Test helpers for a real nats-server: private servers, publishing envelopes, and reading what services published."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import nats
import nats.errors
import pytest
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from pydantic import ValidationError

from shared.embedded.infrastructure import free_port, start_nats
from shared.events import Envelope, EventType, UnsupportedSchemaVersion, decode_envelope
from shared.subjects import EVENTS_SUBJECT_PREFIX, ConsumerSpec, envelope_subject, event_filter

HOST = "127.0.0.1"
# A subscription that receives nothing for this long has read every message already published.
QUIET_S = 0.5
# How long `wait_for_log` polls before it gives up.
LOG_WAIT_S = 30.0
# The pause between two polls of a log or a consumer's state.
POLL_INTERVAL_S = 0.05

ALL_EVENTS_SUBJECT = f"{EVENTS_SUBJECT_PREFIX}.>"


@contextmanager
def private_nats(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[str]:
    """Run a nats-server of its own for one test package or module and yield its URL.

    A private server keeps durable consumers and work-queue streams free of
    the messages that other tests publish.
    """
    directory = tmp_path_factory.mktemp(name)
    server = start_nats(HOST, free_port(), directory, directory / "logs")
    try:
        yield f"nats://{HOST}:{server.port}"
    finally:
        server.stop()


@asynccontextmanager
async def jetstream_client(url: str) -> AsyncIterator[JetStreamContext]:
    """Connect to the nats-server at `url` and yield its JetStream context until the block ends."""
    client = await nats.connect(url)
    try:
        yield client.jetstream()
    finally:
        await client.close()


async def publish_envelope(jetstream: JetStreamContext, envelope: Envelope, subject: str | None = None) -> None:
    """Publish `envelope` as a service would, with its event id as `Nats-Msg-Id`.

    It goes to the subject a service would use (`shared.subjects.envelope_subject`) unless `subject` is given.
    """
    await jetstream.publish(
        subject or envelope_subject(envelope),
        envelope.model_dump_json().encode(),
        headers={"Nats-Msg-Id": envelope.event_id},
    )


async def wait_for_event(
    jetstream: JetStreamContext, event_type: EventType, request_id: str, wait_s: float
) -> Envelope:
    """Return the first `event_type` event of the request. Raises `nats.errors.TimeoutError` after `wait_s` seconds."""
    subscription = await jetstream.subscribe(event_filter(event_type), ordered_consumer=True)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            msg = await subscription.next_msg(timeout=max(deadline - time.monotonic(), 0.01))
            envelope = _decode_or_none(msg.data)
            if envelope is not None and envelope.request_id == request_id:
                return envelope
    finally:
        await subscription.unsubscribe()


async def published_events(jetstream: JetStreamContext, subject: str = ALL_EVENTS_SUBJECT) -> list[Envelope]:
    """Return every envelope published on `subject` so far, in stream order, skipping malformed messages."""
    subscription = await jetstream.subscribe(subject, ordered_consumer=True)
    found: list[Envelope] = []
    try:
        while True:
            envelope = _decode_or_none((await subscription.next_msg(timeout=QUIET_S)).data)
            if envelope is not None:
                found.append(envelope)
    except nats.errors.TimeoutError:
        return found
    finally:
        await subscription.unsubscribe()


async def wait_for_log(logs: list[dict], event: str, wait_s: float = LOG_WAIT_S) -> list[dict]:
    """Poll the entries of `structlog.testing.capture_logs` until one has `event`, and return all such entries.

    Returns an empty list when none appeared within `wait_s` seconds.
    """
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        matches = [entry for entry in logs if entry["event"] == event]
        if matches:
            return matches
        await asyncio.sleep(POLL_INTERVAL_S)
    return []


async def wait_until_settled(
    jetstream: JetStreamContext, consumer: ConsumerSpec, stream_sequence: int, wait_s: float
) -> ConsumerInfo:
    """Wait until `consumer` has acked or terminated every message up to `stream_sequence`, and return its state.

    Raises `AssertionError` after `wait_s` seconds.
    """
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        info = await jetstream.consumer_info(consumer.stream, consumer.durable)
        if _settled(info, stream_sequence):
            return info
        await asyncio.sleep(POLL_INTERVAL_S)
    message = f"consumer {consumer.durable} did not settle stream sequence {stream_sequence} within {wait_s} s"
    raise AssertionError(message)


def _settled(info: ConsumerInfo, stream_sequence: int) -> bool:
    # The ack floor passes a sequence once that message and every earlier one are acked or terminated.
    # A consumer with nothing pending has also settled every message it was delivered.
    if info.ack_floor.stream_seq >= stream_sequence:
        return True
    return info.delivered.stream_seq >= stream_sequence and info.num_ack_pending == 0


def _decode_or_none(data: bytes) -> Envelope | None:
    # Tests publish malformed messages on purpose, so readers skip them.
    try:
        return decode_envelope(data)
    except (ValidationError, UnsupportedSchemaVersion):
        return None

"""The batch writer settles each message of a batch, and a redelivered batch that was stored before is not stored again.

Each test pulls from a stream and durable consumer of its own, with a short
ack wait, so a batch left unacked comes back within the test.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from structlog.testing import capture_logs

from services.telemetry.consumer import EventBatchWriter, RetryDelay
from services.telemetry.metrics import TelemetryMetrics
from services.telemetry.migrations import load_migrations
from services.telemetry.puller import BatchPuller
from services.telemetry.rows import decode_event
from services.telemetry.store import EventStore
from shared.bus import consumer_config
from shared.events import Envelope, EventType, FailedPayload, new_envelope
from shared.subjects import ConsumerSpec
from tests.support.jetstream import wait_for_log, wait_until_settled
from tests.telemetry.signal_events import request_events

pytestmark = [pytest.mark.nats, pytest.mark.clickhouse]

# JetStream redelivers an unacked message after this long.
ACK_WAIT_S = 1.0
FETCH_TIMEOUT_S = 0.2
BATCH_MAX_BYTES = 2 * 1024 * 1024
# Several ack waits and fetch timeouts.
SETTLE_WAIT_S = 10.0


@pytest.fixture
async def nats_client(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


@pytest.fixture
async def spec(nats_client: NatsClient) -> AsyncIterator[ConsumerSpec]:
    name = f"WRITER_{uuid.uuid4().hex[:8].upper()}"
    spec = ConsumerSpec(stream=name, durable="telemetry", filter_subject=f"test.{name}.>", ack_wait_s=ACK_WAIT_S)
    jetstream = nats_client.jetstream()
    await jetstream.add_stream(name=name, subjects=[spec.filter_subject])
    await jetstream.add_consumer(name, consumer_config(spec))
    yield spec
    await jetstream.delete_stream(name)


@pytest.fixture
async def store(clickhouse_dsn: str) -> AsyncIterator[EventStore]:
    store = EventStore.open(clickhouse_dsn, query_max_execution_time_s=5)
    await store.migrate(load_migrations())
    yield store
    store.close()


def _failed_events(count: int) -> list[Envelope]:
    payload = FailedPayload(stage="inference", error_code="backend_error", message="backend returned 500")
    return [new_envelope(EventType.FAILED, request_id=f"r{i}", tenant="acme", payload=payload) for i in range(count)]


async def _publish(jetstream: JetStreamContext, spec: ConsumerSpec, bodies: list[bytes]) -> int:
    """Publish `bodies` in order and return the stream sequence of the last one."""
    subject = spec.filter_subject.replace(">", "event")
    sequence = 0
    for body in bodies:
        sequence = (await jetstream.publish(subject, body, stream=spec.stream)).seq
    return sequence


def _puller(spec: ConsumerSpec, handler: EventBatchWriter) -> BatchPuller:
    return BatchPuller(
        spec, handler.store_batch, batch_size=100, batch_max_bytes=BATCH_MAX_BYTES, fetch_timeout_s=FETCH_TIMEOUT_S
    )


async def _raw_count(store: EventStore) -> int:
    _, rows = await store.query("SELECT count() FROM events", {})
    return int(rows[0][0])


async def test_malformed_message_among_valid(
    nats_client: NatsClient, spec: ConsumerSpec, store: EventStore
) -> None:
    jetstream = nats_client.jetstream()
    valid = [envelope.model_dump_json().encode() for envelope in _failed_events(5)]
    last = await _publish(jetstream, spec, valid[:3] + [b"{not an envelope"] + valid[3:])
    writer = EventBatchWriter(store, RetryDelay(initial_s=0.1, max_s=0.5))
    puller = _puller(spec, writer)

    with capture_logs() as logs:
        await puller.start(nats_client)
        try:
            info = await wait_until_settled(jetstream, spec, last, SETTLE_WAIT_S)
        finally:
            await puller.stop()

    stored = [entry for entry in logs if entry["event"] == "event_batch_stored"]
    rejected = [entry for entry in logs if entry["event"] == "message_rejected"]
    assert [(entry["events"], entry["inserted"]) for entry in stored] == [(5, 5)]
    assert len(rejected) == 1
    assert "json_invalid" in rejected[0]["error"]
    assert info.num_ack_pending == 0
    assert info.num_redelivered == 0
    assert await _raw_count(store) == 5


async def test_redelivery_after_crash_not_stored_again(
    nats_client: NatsClient, spec: ConsumerSpec, store: EventStore, clickhouse_dsn: str
) -> None:
    jetstream = nats_client.jetstream()
    last = await _publish(jetstream, spec, [envelope.model_dump_json().encode() for envelope in _failed_events(4)])
    await _store_without_acking(nats_client, spec, store)

    # A new process: its store remembers nothing, so only the lookup can tell.
    restarted = EventStore.open(clickhouse_dsn, query_max_execution_time_s=5)
    puller = _puller(spec, EventBatchWriter(restarted, RetryDelay(initial_s=0.1, max_s=0.5)))
    try:
        with capture_logs() as logs:
            await puller.start(nats_client)
            stored = await wait_for_log(logs, "event_batch_stored", SETTLE_WAIT_S)
            info = await wait_until_settled(jetstream, spec, last, SETTLE_WAIT_S)
        await puller.stop()
    finally:
        restarted.close()

    assert [(entry["events"], entry["inserted"], entry["duplicates"]) for entry in stored] == [(4, 0, 4)]
    assert info.num_ack_pending == 0
    assert await _raw_count(store) == 4


async def test_signal_rows_with_embeddings(
    nats_client: NatsClient, spec: ConsumerSpec, store: EventStore
) -> None:
    jetstream = nats_client.jetstream()
    last = await _publish(jetstream, spec, [envelope.model_dump_json().encode() for envelope in request_events("r1")])
    puller = _puller(spec, EventBatchWriter(store, RetryDelay(initial_s=0.1, max_s=0.5), embed_prompts=True))

    await puller.start(nats_client)
    try:
        info = await wait_until_settled(jetstream, spec, last, SETTLE_WAIT_S)
    finally:
        await puller.stop()

    assert info.num_ack_pending == 0
    _, result = await store.query("SELECT type, length(prompt_embedding) FROM request_signals ORDER BY ts", {})
    assert result == [
        ("request.accepted", 384),
        ("request.screened", 0),
        ("request.assigned", 0),
        ("generation.completed", 0),
        ("output.moderated", 0),
        ("output.delivered", 0),
    ]


async def _store_without_acking(nats_client: NatsClient, spec: ConsumerSpec, store: EventStore) -> None:
    # What a process killed between its insert and its acks leaves behind:
    # the rows are in ClickHouse and JetStream redelivers the messages.
    inserted = asyncio.Event()

    async def insert_then_die(batch: list[Msg]) -> None:
        await store.insert_new([decode_event(message.data) for message in batch])
        inserted.set()

    puller = BatchPuller(
        spec, insert_then_die, batch_size=100, batch_max_bytes=BATCH_MAX_BYTES, fetch_timeout_s=FETCH_TIMEOUT_S
    )
    await puller.start(nats_client)
    try:
        await asyncio.wait_for(inserted.wait(), SETTLE_WAIT_S)
    finally:
        await puller.stop()


async def test_store_down_leaves_backlog_undelivered(nats_client: NatsClient, clickhouse_dsn: str) -> None:
    # The consumer hands out at most two batches. While they wait for their
    # retry, JetStream delivers nothing more, so the writer tries two inserts
    # per retry delay and the rest of the backlog stays in the stream.
    name = f"DOWN_{uuid.uuid4().hex[:8].upper()}"
    spec = ConsumerSpec(stream=name, durable="telemetry", filter_subject=f"test.{name}.>", max_ack_pending=10)
    jetstream = nats_client.jetstream()
    await jetstream.add_stream(name=name, subjects=[spec.filter_subject])
    await jetstream.add_consumer(name, consumer_config(spec))
    # Without migrations there is no events table, so every insert fails.
    store = EventStore.open(clickhouse_dsn, query_max_execution_time_s=5)
    metrics = TelemetryMetrics()
    writer = EventBatchWriter(store, RetryDelay(initial_s=60.0, max_s=60.0), metrics=metrics)
    puller = BatchPuller(
        spec, writer.store_batch, batch_size=5, batch_max_bytes=BATCH_MAX_BYTES, fetch_timeout_s=FETCH_TIMEOUT_S
    )
    await _publish(jetstream, spec, [envelope.model_dump_json().encode() for envelope in _failed_events(50)])

    try:
        with capture_logs() as logs:
            await puller.start(nats_client)
            await wait_for_log(logs, "event_batch_store_failed", SETTLE_WAIT_S)
            # Several fetch timeouts, in which a writer without backoff would try again.
            await asyncio.sleep(10 * FETCH_TIMEOUT_S)
            await puller.stop()
        info = await jetstream.consumer_info(name, spec.durable)
    finally:
        store.close()
        await jetstream.delete_stream(name)

    failed = [entry for entry in logs if entry["event"] == "event_batch_store_failed"]
    assert [(entry["events"], entry["retry_delay_s"]) for entry in failed] == [(5, 60.0), (5, 60.0)]
    assert metrics.registry.get_sample_value("sluice_telemetry_insert_retries_total") == 2
    assert metrics.registry.get_sample_value("sluice_telemetry_events_written_total") == 0
    assert info.num_ack_pending == 10
    assert info.num_pending == 40

"""The batch pull loop hands batches over when full or at the fetch timeout, and settles them before stopping."""

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

from services.telemetry.puller import SUBJECT_HEADROOM_BYTES, BatchPuller, delivery_count
from shared.bus import consumer_config
from shared.subjects import ConsumerSpec

pytestmark = pytest.mark.nats

# Far below the 30 s ack wait after which JetStream would redeliver a lost batch.
DELIVERY_WAIT_S = 3.0
FETCH_TIMEOUT_S = 0.1
# Above NATS's default max_payload of 1 MiB plus the subject headroom, as the puller requires.
BATCH_MAX_BYTES = 2 * 1024 * 1024


@pytest.fixture
async def nats_client(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


@pytest.fixture
async def spec(nats_client: NatsClient) -> AsyncIterator[ConsumerSpec]:
    name = f"PULLER_{uuid.uuid4().hex[:8].upper()}"
    spec = ConsumerSpec(stream=name, durable="puller", filter_subject=f"test.{name}.>")
    jetstream = nats_client.jetstream()
    await jetstream.add_stream(name=name, subjects=[spec.filter_subject])
    await jetstream.add_consumer(name, consumer_config(spec))
    yield spec
    await jetstream.delete_stream(name)


async def _publish(jetstream: JetStreamContext, spec: ConsumerSpec, count: int) -> None:
    for index in range(count):
        await jetstream.publish(spec.filter_subject.replace(">", str(index)), b"x", stream=spec.stream)


async def test_partial_batch_arrives_promptly(nats_client: NatsClient, spec: ConsumerSpec) -> None:
    received: list[int] = []
    all_received = asyncio.Event()

    async def handle(batch: list[Msg]) -> None:
        received.extend(message.metadata.sequence.stream for message in batch)
        for message in batch:
            await message.ack()
        if len(received) == 3:
            all_received.set()

    jetstream = nats_client.jetstream()
    puller = BatchPuller(spec, handle, batch_size=500, batch_max_bytes=BATCH_MAX_BYTES, fetch_timeout_s=FETCH_TIMEOUT_S)
    await puller.start(nats_client)
    try:
        await _publish(jetstream, spec, 3)
        await asyncio.wait_for(all_received.wait(), DELIVERY_WAIT_S)
    finally:
        await puller.stop()

    assert sorted(received) == [1, 2, 3]


async def test_stop_finishes_batch_in_hand(nats_client: NatsClient, spec: ConsumerSpec) -> None:
    handling = asyncio.Event()
    acked: list[int] = []

    async def handle_slowly(batch: list[Msg]) -> None:
        handling.set()
        await asyncio.sleep(0.3)
        for message in batch:
            # ack_sync waits for the server, so the consumer info below is current.
            await message.ack_sync()
            acked.append(message.metadata.sequence.stream)

    jetstream = nats_client.jetstream()
    puller = BatchPuller(spec, handle_slowly, batch_size=10, batch_max_bytes=BATCH_MAX_BYTES, fetch_timeout_s=FETCH_TIMEOUT_S)
    await puller.start(nats_client)
    await _publish(jetstream, spec, 2)
    await asyncio.wait_for(handling.wait(), DELIVERY_WAIT_S)

    await puller.stop()

    assert acked
    info = await jetstream.consumer_info(spec.stream, spec.durable)
    assert info.num_ack_pending == 0


async def test_failing_handler_keeps_loop_running(nats_client: NatsClient, spec: ConsumerSpec) -> None:
    calls = 0
    second_call = asyncio.Event()

    async def fail_then_ack(batch: list[Msg]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("handler bug")
        for message in batch:
            await message.ack()
        second_call.set()

    jetstream = nats_client.jetstream()
    puller = BatchPuller(spec, fail_then_ack, batch_size=10, batch_max_bytes=BATCH_MAX_BYTES, fetch_timeout_s=FETCH_TIMEOUT_S)
    await puller.start(nats_client)
    try:
        await _publish(jetstream, spec, 1)
        await asyncio.sleep(0.5)
        await _publish(jetstream, spec, 1)
        await asyncio.wait_for(second_call.wait(), DELIVERY_WAIT_S)
    finally:
        await puller.stop()

    assert calls == 2


async def test_full_batch_skips_timeout(nats_client: NatsClient, spec: ConsumerSpec) -> None:
    batches: list[int] = []
    handled = asyncio.Event()

    async def handle(batch: list[Msg]) -> None:
        batches.append(len(batch))
        for message in batch:
            await message.ack()
        handled.set()

    jetstream = nats_client.jetstream()
    await _publish(jetstream, spec, 4)
    # A fetch timeout far beyond the wait below: only a full batch arrives in time.
    puller = BatchPuller(spec, handle, batch_size=4, batch_max_bytes=BATCH_MAX_BYTES, fetch_timeout_s=60.0)
    await puller.start(nats_client)
    try:
        await asyncio.wait_for(handled.wait(), DELIVERY_WAIT_S)
    finally:
        await puller.stop()

    assert batches == [4]


async def test_redelivery_counted(nats_client: NatsClient, spec: ConsumerSpec) -> None:
    counts: list[int] = []
    acked = asyncio.Event()

    async def nak_then_ack(batch: list[Msg]) -> None:
        for message in batch:
            counts.append(delivery_count(message))
            if len(counts) == 1:
                await message.nak()
            else:
                await message.ack()
                acked.set()

    jetstream = nats_client.jetstream()
    puller = BatchPuller(spec, nak_then_ack, batch_size=10, batch_max_bytes=BATCH_MAX_BYTES, fetch_timeout_s=FETCH_TIMEOUT_S)
    await puller.start(nats_client)
    try:
        await _publish(jetstream, spec, 1)
        await asyncio.wait_for(acked.wait(), DELIVERY_WAIT_S)
    finally:
        await puller.stop()

    assert counts == [1, 2]


async def test_missing_consumer_logged(nats_client: NatsClient, spec: ConsumerSpec) -> None:
    async def never_called(batch: list[Msg]) -> None:
        raise AssertionError("a consumer that does not exist delivered a batch")

    missing = ConsumerSpec(stream=spec.stream, durable="missing", filter_subject=spec.filter_subject)
    puller = BatchPuller(missing, never_called, batch_size=10, batch_max_bytes=BATCH_MAX_BYTES, fetch_timeout_s=FETCH_TIMEOUT_S)
    with capture_logs() as logs:
        await puller.start(nats_client)
        try:
            failures = await _wait_for_log(logs, "pull_request_failed")
        finally:
            await puller.stop()

    assert failures
    assert failures[0]["status"] == "503"


async def test_max_bytes_below_payload_rejected(nats_client: NatsClient, spec: ConsumerSpec) -> None:
    async def never_called(batch: list[Msg]) -> None:
        raise AssertionError("the puller started with a byte limit that could strand a message")

    too_small = nats_client.max_payload + SUBJECT_HEADROOM_BYTES - 1
    puller = BatchPuller(spec, never_called, batch_size=10, batch_max_bytes=too_small, fetch_timeout_s=FETCH_TIMEOUT_S)

    with pytest.raises(ValueError, match="SLUICE_TELEMETRY_BATCH_MAX_BYTES to at least"):
        await puller.start(nats_client)


async def _wait_for_log(logs: list[dict], event: str) -> list[dict]:
    for _ in range(int(DELIVERY_WAIT_S / 0.05)):
        matches = [entry for entry in logs if entry["event"] == event]
        if matches:
            return matches
        await asyncio.sleep(0.05)
    return []

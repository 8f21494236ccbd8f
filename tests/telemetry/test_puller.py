"""The batch pull loop hands partial batches over at the fetch timeout and settles them before stopping."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.telemetry.puller import BatchPuller
from shared.bus import consumer_config
from shared.subjects import ConsumerSpec

pytestmark = pytest.mark.nats

# Far below the 30 s ack wait after which JetStream would redeliver a lost batch.
DELIVERY_WAIT_S = 3.0
FETCH_TIMEOUT_S = 0.1


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
    puller = BatchPuller(spec, handle, batch_size=500, fetch_timeout_s=FETCH_TIMEOUT_S)
    await puller.start(jetstream)
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
    puller = BatchPuller(spec, handle_slowly, batch_size=10, fetch_timeout_s=FETCH_TIMEOUT_S)
    await puller.start(jetstream)
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
    puller = BatchPuller(spec, fail_then_ack, batch_size=10, fetch_timeout_s=FETCH_TIMEOUT_S)
    await puller.start(jetstream)
    try:
        await _publish(jetstream, spec, 1)
        await asyncio.sleep(0.5)
        await _publish(jetstream, spec, 1)
        await asyncio.wait_for(second_call.wait(), DELIVERY_WAIT_S)
    finally:
        await puller.stop()

    assert calls == 2

"""The pull loops of `shared/pulling.py` on a real nats-server: concurrency bound, order, failures and stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import nats
import nats.js.api as js_api
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from structlog.testing import capture_logs

from shared.bus import consumer_config
from shared.pulling import BatchPuller, ConcurrentPuller, one_at_a_time
from shared.subjects import ConsumerSpec
from tests.support.jetstream import private_nats

STREAM = "PULLTEST"
SUBJECT_PREFIX = "pulltest"
WAIT_S = 10.0

pytestmark = pytest.mark.nats


@pytest.fixture(scope="module")
def bus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with private_nats(tmp_path_factory, "pulling-nats") as url:
        yield url


@pytest.fixture
async def client(bus_url: str) -> AsyncIterator[Client]:
    connection = await nats.connect(bus_url)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def spec(client: Client, request: pytest.FixtureRequest) -> ConsumerSpec:
    """Create a new stream and durable consumer per test, so sequences start at 1 and tests share no messages."""
    jetstream = client.jetstream()
    with contextlib.suppress(NotFoundError):
        await jetstream.delete_stream(STREAM)
    await jetstream.add_stream(js_api.StreamConfig(name=STREAM, subjects=[f"{SUBJECT_PREFIX}.>"]))
    durable = request.node.name.replace("[", "-").replace("]", "")
    consumer = ConsumerSpec(STREAM, durable, f"{SUBJECT_PREFIX}.>", ack_wait_s=30.0)
    await jetstream.add_consumer(STREAM, consumer_config(consumer))
    return consumer


async def _publish(jetstream: JetStreamContext, count: int) -> None:
    for index in range(count):
        await jetstream.publish(f"{SUBJECT_PREFIX}.item", str(index).encode())


async def _wait_until_acked(jetstream: JetStreamContext, spec: ConsumerSpec, count: int) -> js_api.ConsumerInfo:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while True:
        info = await jetstream.consumer_info(spec.stream, spec.durable)
        if info.ack_floor.stream_seq >= count and info.num_ack_pending == 0:
            return info
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not all {count} messages acked within {WAIT_S} s: {info}")
        await asyncio.sleep(0.05)


async def test_concurrent_puller_bounds_in_flight(client: Client, spec: ConsumerSpec) -> None:
    jetstream = client.jetstream()
    release = asyncio.Event()
    running = 0
    peak = 0

    async def handle(msg: Msg) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        await msg.ack()

    puller = ConcurrentPuller(spec, handle, max_in_flight=3)
    await puller.start(jetstream)
    await _publish(jetstream, 10)
    await asyncio.sleep(0.5)
    peak_while_blocked = peak
    release.set()
    await _wait_until_acked(jetstream, spec, 10)
    await puller.stop()

    assert peak_while_blocked == 3
    assert peak == 3


async def test_batch_puller_keeps_stream_order(client: Client, spec: ConsumerSpec) -> None:
    jetstream = client.jetstream()
    await _publish(jetstream, 40)
    batches: list[list[int]] = []

    async def handle(batch: list[Msg]) -> None:
        batches.append([int(msg.data) for msg in batch])
        for msg in batch:
            await msg.ack()

    puller = BatchPuller(spec, handle, batch_size=16)
    await puller.start(jetstream)
    await _wait_until_acked(jetstream, spec, 40)
    await puller.stop()

    assert [item for batch in batches for item in batch] == list(range(40))
    assert max(len(batch) for batch in batches) <= 16


async def test_failing_message_does_not_stop_batch(client: Client, spec: ConsumerSpec) -> None:
    jetstream = client.jetstream()
    handled: list[int] = []

    async def handle(msg: Msg) -> None:
        if int(msg.data) == 2:
            await msg.term()
            raise RuntimeError("broken handler")
        handled.append(int(msg.data))
        await msg.ack()

    with capture_logs() as logs:
        puller = BatchPuller(spec, one_at_a_time(handle), batch_size=8)
        await puller.start(jetstream)
        await _publish(jetstream, 5)
        await _wait_until_acked(jetstream, spec, 5)
        await puller.stop()

    failures = [entry for entry in logs if entry["event"] == "message_handler_failed"]
    assert handled == [0, 1, 3, 4]
    assert len(failures) == 1
    assert failures[0]["subject"] == f"{SUBJECT_PREFIX}.item"


async def test_stop_lets_running_message_finish(client: Client, spec: ConsumerSpec) -> None:
    jetstream = client.jetstream()
    started = asyncio.Event()
    acked = asyncio.Event()

    async def handle(msg: Msg) -> None:
        started.set()
        await asyncio.sleep(0.3)
        await msg.ack()
        acked.set()

    puller = ConcurrentPuller(spec, handle, max_in_flight=2)
    await puller.start(jetstream)
    await _publish(jetstream, 1)
    await asyncio.wait_for(started.wait(), WAIT_S)
    await puller.stop()
    acked_before_stop_returned = acked.is_set()
    # nats-server applies acks from a queue of its own, so its count may lag the ack by a moment.
    info = await _wait_until_acked(jetstream, spec, 1)

    assert acked_before_stop_returned
    assert info.num_redelivered == 0


async def test_stop_grace_abandons_slow_message(client: Client, spec: ConsumerSpec) -> None:
    jetstream = client.jetstream()
    started = asyncio.Event()

    async def handle(msg: Msg) -> None:
        started.set()
        await asyncio.sleep(30)
        await msg.ack()

    puller = ConcurrentPuller(spec, handle, max_in_flight=2, stop_grace_s=0.2)
    await puller.start(jetstream)
    await _publish(jetstream, 1)
    await asyncio.wait_for(started.wait(), WAIT_S)
    with capture_logs() as logs:
        await puller.stop()
    info = await jetstream.consumer_info(spec.stream, spec.durable)

    # Unacked, so JetStream redelivers it after the ack wait.
    assert info.num_ack_pending == 1
    assert [entry["messages"] for entry in logs if entry["event"] == "pull_consumer_abandoned_messages"] == [1]


@pytest.mark.parametrize("bad", [0, -1])
def test_invalid_limits_rejected(bad: int) -> None:
    spec = ConsumerSpec(STREAM, "unused", f"{SUBJECT_PREFIX}.>")

    async def handle(_msg: Msg) -> None:
        return None

    with pytest.raises(ValueError, match="max_in_flight must be at least 1"):
        ConcurrentPuller(spec, handle, max_in_flight=bad)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        BatchPuller(spec, one_at_a_time(handle), batch_size=bad)

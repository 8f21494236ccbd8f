"""One `AdmissionLoop` on a real nats-server and redis-server, with a handler written for each test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as redis
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from structlog.testing import capture_logs

from services.inference.admission import AdmissionLoop
from shared import subjects
from shared.events import Envelope, VariantSpec
from shared.pulling import MessageHandler
from shared.queue_positions import QueuePositions, queue_key
from tests.inference.harness import assigned_envelope
from tests.support.jetstream import publish_envelope

pytestmark = [pytest.mark.nats, pytest.mark.redis]

TENANT = "acme"
# Short enough that the tests wait tenths of a second for a rescan or a redelivery.
RESCAN_INTERVAL_S = 0.2
ACK_WAIT_S = 1.0
WAIT_S = 30.0


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.Redis]:
    client = redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def positions(redis_client: redis.Redis) -> QueuePositions:
    return QueuePositions(redis_client, 60)


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> str:
    """A pool of its own, whose queue consumers get a 1 s ack wait."""
    monkeypatch.setattr(subjects, "POOL_QUEUE_ACK_WAIT_S", ACK_WAIT_S)
    return f"pool{uuid.uuid4().hex[:8]}"


def _assigned(backend: str) -> Envelope:
    return assigned_envelope(VariantSpec(key="control", backend=backend), prompt="Good morrow.", tenant=TENANT, deadline_in_s=None)


def _loop(backend: str, handler: MessageHandler, positions: QueuePositions, stop_grace_s: float = 10.0) -> AdmissionLoop:
    return AdmissionLoop(
        backend, 1, handler, positions, {}, rescan_interval_s=RESCAN_INTERVAL_S, stop_grace_s=stop_grace_s
    )


async def test_stop_leaves_unfinished_message_for_redelivery(
    jetstream: JetStreamContext, positions: QueuePositions, backend: str
) -> None:
    started = asyncio.Event()
    deliveries: list[int] = []

    async def hang(msg: Msg) -> None:
        deliveries.append(msg.metadata.num_delivered)
        started.set()
        await asyncio.Event().wait()

    async def ack(msg: Msg) -> None:
        deliveries.append(msg.metadata.num_delivered)
        await msg.ack()

    first = _loop(backend, hang, positions, stop_grace_s=0.2)
    await first.start(jetstream)
    await publish_envelope(jetstream, _assigned(backend))
    await asyncio.wait_for(started.wait(), WAIT_S)
    with capture_logs() as logs:
        await first.stop()
    second = _loop(backend, ack, positions)
    await second.start(jetstream)
    try:
        await _wait_for(lambda: len(deliveries) == 2)
    finally:
        await second.stop()

    abandoned = [entry for entry in logs if entry["event"] == "admission_abandoned_messages"]
    assert deliveries == [1, 2]
    assert len(abandoned) == 1
    assert abandoned[0]["messages"] == 1


async def test_rescan_finds_nacked_message(jetstream: JetStreamContext, positions: QueuePositions, backend: str) -> None:
    deliveries: list[int] = []

    async def nak_first(msg: Msg) -> None:
        deliveries.append(msg.metadata.num_delivered)
        if msg.metadata.num_delivered == 1:
            await msg.nak()
        else:
            await msg.ack()

    loop = _loop(backend, nak_first, positions)
    await loop.start(jetstream)
    try:
        await publish_envelope(jetstream, _assigned(backend))
        # The redelivery rings no doorbell, so only the rescan finds it.
        await _wait_for(lambda: len(deliveries) == 2)
    finally:
        await loop.stop()

    assert deliveries == [1, 2]


async def test_admission_takes_request_out_of_queue(
    jetstream: JetStreamContext, redis_client: redis.Redis, positions: QueuePositions, backend: str
) -> None:
    handled = asyncio.Event()

    async def ack(msg: Msg) -> None:
        await msg.ack()
        handled.set()

    assigned = _assigned(backend)
    loop = _loop(backend, ack, positions)
    await loop.start(jetstream)
    try:
        await publish_envelope(jetstream, assigned)
        await asyncio.wait_for(handled.wait(), WAIT_S)
    finally:
        await loop.stop()
    # The projector adds the request after the admission, as it may when both read the same message at once.
    async with redis_client.pipeline(transaction=False) as pipe:
        positions.queue_event(pipe, assigned, 1)
        await pipe.execute()
    score = await redis_client.zscore(queue_key(backend, TENANT), assigned.request_id)

    assert score is not None
    assert score < 0
    assert await positions.waiting_ahead(backend, TENANT, assigned.request_id) is None


async def _wait_for(condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), WAIT_S)

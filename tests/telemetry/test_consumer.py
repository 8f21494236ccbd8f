"""The telemetry consumer stores each event of the EVENTS stream once and acks only what it stored."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client
from faststream.nats import NatsBroker
from nats.js import JetStreamContext
from structlog.testing import capture_logs

from services.telemetry.consumer import RetryDelay
from services.telemetry.migrations import load_migrations
from shared.bus import EventPublisher, make_broker
from shared.events import Envelope, EventType, FailedPayload, new_envelope
from shared.settings import Settings
from shared.subjects import EVENTS_STREAM, TELEMETRY_CONSUMER, event_subject

# The count of one tenant's events under FINAL, which returns each stored
# event exactly once.
EXACTLY_ONCE_COUNT = "SELECT count() FROM events FINAL WHERE tenant = {tenant:String}"
RAW_COUNT = "SELECT count() FROM events WHERE tenant = {tenant:String}"

# Long enough for several fetch timeouts (0.1 s in tests) and retry delays,
# also on a loaded two-core machine. The checks poll, so a pass returns sooner.
WAIT_S = 30.0


@pytest.fixture
async def broker(nats_url: str) -> AsyncIterator[NatsBroker]:
    broker = make_broker(nats_url)
    await broker.connect()
    yield broker
    await broker.stop()


@pytest.fixture
async def jetstream(broker: NatsBroker) -> JetStreamContext:
    connection = await broker.connect()
    return connection.jetstream()


@pytest.fixture
def store_client(telemetry_app: Settings) -> Iterator[Client]:
    client = clickhouse_connect.get_client(dsn=telemetry_app.resolved_clickhouse_dsn)
    yield client
    client.close()


def _tenant() -> str:
    return f"tenant-{uuid.uuid4().hex[:8]}"


def _failed_events(tenant: str, count: int) -> list[Envelope]:
    payload = FailedPayload(stage="inference", error_code="backend_error", message="backend returned 500")
    return [new_envelope(EventType.FAILED, request_id=f"r{i}", tenant=tenant, payload=payload) for i in range(count)]


async def _count(client: Client, sql: str, tenant: str) -> int:
    result = await asyncio.to_thread(client.query, sql, {"tenant": tenant})
    return int(result.result_rows[0][0])


async def _eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _publish_copy(broker: NatsBroker, envelope: Envelope) -> None:
    # A different Nats-Msg-Id gets past JetStream's duplicate window, as a
    # redelivered batch or a stage publishing after the window would.
    await broker.publish(
        envelope.model_dump_json(),
        event_subject(envelope.type),
        headers={"Nats-Msg-Id": f"copy-{uuid.uuid4().hex}"},
        stream=EVENTS_STREAM,
    )


def test_retry_delay_doubles_to_max() -> None:
    delay = RetryDelay(initial_s=1.0, max_s=5.0)

    assert [delay.after(deliveries) for deliveries in (1, 2, 3, 4, 100)] == [1.0, 2.0, 4.0, 5.0, 5.0]


@pytest.mark.nats
@pytest.mark.clickhouse
async def test_batch_stored_exactly_once(broker: NatsBroker, store_client: Client) -> None:
    tenant = _tenant()
    events = _failed_events(tenant, 5)
    publisher = EventPublisher(broker)

    for envelope in events:
        await publisher.publish(envelope)
    await _publish_copy(broker, events[0])
    await _publish_copy(broker, events[3])

    assert await _eventually(lambda: _stored(store_client, tenant, 5))
    await asyncio.sleep(0.5)
    assert await _count(store_client, EXACTLY_ONCE_COUNT, tenant) == 5


@pytest.mark.nats
@pytest.mark.clickhouse
async def test_late_copy_not_inserted(broker: NatsBroker, store_client: Client) -> None:
    tenant = _tenant()
    [envelope] = _failed_events(tenant, 1)
    await EventPublisher(broker).publish(envelope)
    assert await _eventually(lambda: _stored(store_client, tenant, 1))

    with capture_logs() as logs:
        await _publish_copy(broker, envelope)
        # On a loaded machine the first batch's log line may land in this capture too, so wait for the copy's.
        assert await _eventually(lambda: _logged_duplicate(logs))

    assert [entry["duplicates"] for entry in logs if entry["event"] == "event_batch_stored"][-1] == 1
    assert await _count(store_client, RAW_COUNT, tenant) == 1


@pytest.mark.nats
@pytest.mark.clickhouse
async def test_malformed_message_terminated(
    broker: NatsBroker, jetstream: JetStreamContext, store_client: Client
) -> None:
    tenant = _tenant()
    [valid] = _failed_events(tenant, 1)

    with capture_logs() as logs:
        await broker.publish(b"{not an envelope", event_subject(EventType.FAILED), stream=EVENTS_STREAM)
        await EventPublisher(broker).publish(valid)
        assert await _eventually(lambda: _stored(store_client, tenant, 1))
        await asyncio.sleep(0.5)

    rejected = [entry for entry in logs if entry["event"] == "message_rejected"]
    assert len(rejected) == 1
    assert "json_invalid" in rejected[0]["error"]
    # nats-server applies acks asynchronously, so the count is polled.
    assert await _eventually(lambda: _all_acked(jetstream))


@pytest.mark.nats
@pytest.mark.clickhouse
async def test_failed_insert_leaves_unacked(
    broker: NatsBroker, jetstream: JetStreamContext, store_client: Client
) -> None:
    tenant = _tenant()
    store_client.command("DROP TABLE events")

    with capture_logs() as logs:
        for envelope in _failed_events(tenant, 3):
            await EventPublisher(broker).publish(envelope)
        assert await _eventually(lambda: _redelivered(jetstream))

    info = await jetstream.consumer_info(EVENTS_STREAM, TELEMETRY_CONSUMER.durable)
    assert info.num_ack_pending >= 3
    assert any(entry["event"] == "event_batch_store_failed" for entry in logs)
    for migration in load_migrations():
        for statement in migration.statements:
            store_client.command(statement)
    assert await _eventually(lambda: _stored(store_client, tenant, 3))
    assert await _eventually(lambda: _all_acked(jetstream))


async def _stored(client: Client, tenant: str, expected: int) -> bool:
    return await _count(client, EXACTLY_ONCE_COUNT, tenant) == expected


async def _logged_duplicate(logs: list[dict]) -> bool:
    return any(entry["event"] == "event_batch_stored" and entry["duplicates"] == 1 for entry in logs)


async def _redelivered(jetstream: JetStreamContext) -> bool:
    info = await jetstream.consumer_info(EVENTS_STREAM, TELEMETRY_CONSUMER.durable)
    return info.num_redelivered > 0


async def _all_acked(jetstream: JetStreamContext) -> bool:
    info = await jetstream.consumer_info(EVENTS_STREAM, TELEMETRY_CONSUMER.durable)
    return info.num_ack_pending == 0

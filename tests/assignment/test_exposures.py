"""Exposure events: published once per unit, experiment and session, and stored in ClickHouse's `exposures` table.

The handler runs in this process against the session's nats-server and
redis-server, and the telemetry service stores what it publishes in chDB.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import clickhouse_connect
import pytest
import redis.asyncio as redis
from clickhouse_connect.driver.client import Client
from faststream.nats import NatsBroker
from nats.js import JetStreamContext

from services.assignment.assigner import Assigner
from services.assignment.exposures import ExposurePublisher, exposure_key
from services.assignment.handler import ScreenedHandler
from services.assignment.hashing import hash_unit
from services.assignment.metrics import AssignmentMetrics
from services.assignment.sticky_store import StickyBucketStore
from shared.bus import EventPublisher, make_broker
from shared.embedded.infrastructure import free_port
from shared.events import ChatMessage, Envelope, EventType, RequestSpec, ScreenedPayload, Verdict
from shared.experiments import ExperimentsFile
from shared.settings import Settings
from shared.subjects import event_filter
from tests.support.envelopes import new_request_envelope
from tests.support.jetstream import published_events

pytestmark = [pytest.mark.nats, pytest.mark.redis, pytest.mark.clickhouse]

# Long enough for telemetry's fetch timeouts on a loaded two-core machine. The checks poll, so a pass returns sooner.
WAIT_S = 30.0
POLL_INTERVAL_S = 0.1
SESSION_S = 1800
EXPERIMENTS = ExperimentsFile.model_validate(
    {
        "default_variant": {"key": "default", "backend": "embedded"},
        "experiments": [
            {"key": "first", "variants": [{"key": "first-arm", "backend": "embedded"}]},
            {"key": "second", "variants": [{"key": "second-arm", "backend": "embedded"}]},
        ],
    }
)
EXPOSURES_QUERY = """
SELECT experiment_key, variant_key, hash_attribute, unit, hash_value, bucket_version, source, request_id
FROM exposures FINAL
WHERE tenant = {tenant:String}
ORDER BY experiment_key
"""


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
async def redis_client(redis_url: str) -> AsyncIterator[redis.Redis]:
    client = redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def handler(broker: NatsBroker, redis_client: redis.Redis) -> ScreenedHandler:
    publisher = EventPublisher(broker)
    metrics = AssignmentMetrics()
    assigner = Assigner(EXPERIMENTS)
    return ScreenedHandler(
        lambda: assigner,
        publisher,
        StickyBucketStore(redis_client, 3600, metrics),
        ExposurePublisher(publisher, redis_client, SESSION_S, metrics),
        metrics,
    )


@pytest.fixture
def store_client(telemetry_app: Settings) -> Iterator[Client]:
    client = clickhouse_connect.get_client(dsn=telemetry_app.resolved_clickhouse_dsn)
    yield client
    client.close()


def _tenant() -> str:
    return f"tenant-{uuid.uuid4().hex[:8]}"


def _screened(tenant: str, user_id: str | None, model: str | None = None) -> tuple[Envelope, ScreenedPayload]:
    request = RequestSpec(messages=[ChatMessage(role="user", content="Good morrow.")], user_id=user_id, model=model)
    payload = ScreenedPayload(request=request, verdict=Verdict.PASSED, scanners=[])
    return new_request_envelope(EventType.SCREENED, payload, tenant=tenant, deadline_in_s=60.0), payload


async def _handle(handler: ScreenedHandler, screened: tuple[Envelope, ScreenedPayload]) -> None:
    envelope, payload = screened
    # `process` does not read the message; only `handle` acks it.
    await handler.process(None, envelope, payload)  # type: ignore[arg-type]


async def _exposures_on_bus(jetstream: JetStreamContext, tenant: str) -> list[Envelope]:
    return [envelope for envelope in await published_events(jetstream, event_filter(EventType.EXPOSED)) if envelope.tenant == tenant]


async def _stored_rows(client: Client, tenant: str, count: int) -> list[dict[str, Any]]:
    """Poll the `exposures` table until it has `count` rows of `tenant` and return them."""
    deadline = time.monotonic() + WAIT_S
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        result = client.query(EXPOSURES_QUERY, parameters={"tenant": tenant})
        rows = [dict(zip(result.column_names, row)) for row in result.result_rows]
        if len(rows) >= count:
            return rows
        await asyncio.sleep(POLL_INTERVAL_S)
    return rows


async def test_exposure_once_per_session(
    handler: ScreenedHandler, jetstream: JetStreamContext, store_client: Client
) -> None:
    tenant = _tenant()
    first = _screened(tenant, "alice")
    repeat = _screened(tenant, "alice")
    other_experiment = _screened(tenant, "alice", model="second")

    for screened in (first, repeat, other_experiment):
        await _handle(handler, screened)
    rows = await _stored_rows(store_client, tenant, 2)

    assert [envelope.request_id for envelope in await _exposures_on_bus(jetstream, tenant)] == [
        first[0].request_id,
        other_experiment[0].request_id,
    ]
    assert rows == [
        {
            "experiment_key": "first",
            "variant_key": "first-arm",
            "hash_attribute": "user_id",
            "unit": "alice",
            "hash_value": hash_unit("first", "alice", 2),
            "bucket_version": 0,
            "source": "hash",
            "request_id": first[0].request_id,
        },
        {
            "experiment_key": "second",
            "variant_key": "second-arm",
            "hash_attribute": "user_id",
            "unit": "alice",
            "hash_value": hash_unit("second", "alice", 2),
            "bucket_version": 0,
            "source": "hash",
            "request_id": other_experiment[0].request_id,
        },
    ]


async def test_redelivery_republishes_same_exposure(
    handler: ScreenedHandler, jetstream: JetStreamContext, store_client: Client
) -> None:
    tenant = _tenant()
    screened = _screened(tenant, "bob")

    await _handle(handler, screened)
    # A redelivery of the same message, as after a crash before its ack.
    await _handle(handler, screened)
    rows = await _stored_rows(store_client, tenant, 1)

    exposures = await _exposures_on_bus(jetstream, tenant)
    assert len(exposures) == 1
    assert exposures[0].request_id == screened[0].request_id
    assert len(rows) == 1


async def test_marked_own_request_republishes(
    broker: NatsBroker, jetstream: JetStreamContext, redis_client: redis.Redis
) -> None:
    tenant = _tenant()
    (envelope, payload), (other_envelope, _payload) = _screened(tenant, "carol"), _screened(tenant, "carol")
    assignment = Assigner(EXPERIMENTS).assign(payload.request, envelope.request_id, tenant=tenant)
    exposures = ExposurePublisher(EventPublisher(broker), redis_client, SESSION_S, AssignmentMetrics())

    first = await exposures.expose(envelope, assignment)
    again = await exposures.expose(envelope, assignment)
    other = await exposures.expose(other_envelope, assignment)

    assert (first, again, other) == (True, True, False)
    assert await redis_client.get(exposure_key(tenant, "first", 0, "carol")) == envelope.request_id


async def test_session_extended_by_later_request(
    broker: NatsBroker, redis_client: redis.Redis
) -> None:
    tenant = _tenant()
    (envelope, payload), (later, _payload) = _screened(tenant, "dave"), _screened(tenant, "dave")
    assignment = Assigner(EXPERIMENTS).assign(payload.request, envelope.request_id, tenant=tenant)
    exposures = ExposurePublisher(EventPublisher(broker), redis_client, SESSION_S, AssignmentMetrics())
    key = exposure_key(tenant, "first", 0, "dave")

    await exposures.expose(envelope, assignment)
    await redis_client.expire(key, 5)
    await exposures.expose(later, assignment)

    assert await redis_client.ttl(key) > SESSION_S - 10


async def test_anonymous_request_exposed_without_mark(
    handler: ScreenedHandler, jetstream: JetStreamContext, redis_client: redis.Redis
) -> None:
    tenant = _tenant()
    screened = _screened(tenant, None)

    await _handle(handler, screened)

    exposures = await _exposures_on_bus(jetstream, tenant)
    assert [envelope.parsed_payload().unit for envelope in exposures] == [screened[0].request_id]
    assert await redis_client.keys(f"sluice:exposure:{tenant}:*") == []


async def test_redis_down_still_exposes(broker: NatsBroker, jetstream: JetStreamContext) -> None:
    tenant = _tenant()
    envelope, payload = _screened(tenant, "erin")
    assignment = Assigner(EXPERIMENTS).assign(payload.request, envelope.request_id, tenant=tenant)
    dead = redis.from_url(f"redis://127.0.0.1:{free_port()}/0", decode_responses=True, socket_connect_timeout=0.5)
    metrics = AssignmentMetrics()
    try:
        published = await ExposurePublisher(EventPublisher(broker), dead, SESSION_S, metrics).expose(envelope, assignment)
    finally:
        await dead.aclose()

    assert published
    assert len(await _exposures_on_bus(jetstream, tenant)) == 1
    for operation in ("exposure_check", "exposure_mark"):
        labels = {"operation": operation}
        assert metrics.registry.get_sample_value("sluice_assignment_redis_errors_total", labels) == 1

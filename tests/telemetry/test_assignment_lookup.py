"""Signal rows after request.assigned get their request's assignment, from memory or else from `request_signals`.

The writer tests pull from a stream and durable consumer of their own, as in
test_batch_writer.py. The restart test runs the telemetry service twice on
the shared EVENTS stream, with a tenant of its own.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import clickhouse_connect
import nats
import pytest
from clickhouse_connect.driver.client import Client
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from structlog.testing import capture_logs

from services.telemetry.app import make_app
from services.telemetry.assignments import Assignment, follows_assignment
from services.telemetry.consumer import EventBatchWriter, RetryDelay
from services.telemetry.metrics import TelemetryMetrics
from services.telemetry.migrations import load_migrations
from services.telemetry.puller import BatchPuller
from services.telemetry.settings import TelemetrySettings
from services.telemetry.signals import SignalBuilder
from services.telemetry.store import EventStore
from shared.bus import EventPublisher, consumer_config, make_broker
from shared.events import (
    AssignedPayload,
    CancelledPayload,
    Envelope,
    EventType,
    FailedPayload,
    ScreenedPayload,
    VariantSpec,
    Verdict,
)
from shared.settings import Settings
from shared.subjects import ConsumerSpec
from tests.support.jetstream import wait_for_log, wait_until_settled
from tests.telemetry.signal_events import accepted, at, request_events, rows, signal_rows

# The assignment in `request_events`: experiment, variant, model, backend.
ASSIGNMENT = ("exp-1", "small", "qwen-0.5b", "tgi")
# The signal row types after request.assigned in `request_events`.
LATER_TYPES = ["generation.completed", "output.moderated", "output.delivered"]

ACK_WAIT_S = 1.0
FETCH_TIMEOUT_S = 0.2
BATCH_MAX_BYTES = 2 * 1024 * 1024
# Several ack waits and fetch timeouts, also on a loaded two-core machine.
SETTLE_WAIT_S = 30.0


@pytest.fixture
async def store(clickhouse_dsn: str) -> AsyncIterator[EventStore]:
    store = EventStore.open(clickhouse_dsn, query_max_execution_time_s=5)
    await store.migrate(load_migrations())
    yield store
    store.close()


@pytest.fixture
async def nats_client(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


@pytest.fixture
async def spec(nats_client: NatsClient) -> AsyncIterator[ConsumerSpec]:
    name = f"LOOKUP_{uuid.uuid4().hex[:8].upper()}"
    spec = ConsumerSpec(stream=name, durable="telemetry", filter_subject=f"test.{name}.>", ack_wait_s=ACK_WAIT_S)
    jetstream = nats_client.jetstream()
    await jetstream.add_stream(name=name, subjects=[spec.filter_subject])
    await jetstream.add_consumer(name, consumer_config(spec))
    yield spec
    await jetstream.delete_stream(name)


def _assignment(row: dict) -> tuple[str, str, str, str]:
    return (row["experiment"], row["variant"], row["model"], row["backend"])


def _assigned(request_id: str, tenant: str, variant: VariantSpec) -> Envelope:
    first = accepted(request_id, tenant=tenant)
    payload = AssignedPayload(
        request=first.parsed_payload().request, experiment_key="exp-1", variant=variant, hash_attribute="request_id"
    )
    return first.follow_up(EventType.ASSIGNED, payload)


def _blocked(request_id: str) -> list[Envelope]:
    first = accepted(request_id)
    payload = ScreenedPayload(
        request=first.parsed_payload().request, verdict=Verdict.BLOCKED, scanners=[], blocked_by="PromptInjection"
    )
    failed = FailedPayload(stage="safety", error_code="scanner_failed", message="prompt screening failed")
    return [first, first.follow_up(EventType.SCREENED, payload), first.follow_up(EventType.FAILED, failed)]


@pytest.mark.parametrize(
    ("event_type", "stage", "expected"),
    [
        (EventType.ACCEPTED, "", False),
        (EventType.SCREENED, "", False),
        (EventType.ASSIGNED, "", False),
        (EventType.COMPLETED, "", True),
        (EventType.MODERATED, "", True),
        (EventType.DELIVERED, "", True),
        (EventType.FAILED, "safety", False),
        (EventType.EXPIRED, "assignment", False),
        (EventType.FAILED, "inference", True),
        (EventType.FAILED, "moderation", True),
        (EventType.EXPIRED, "inference", True),
        (EventType.CANCELLED, "ingress", True),
    ],
)
def test_follows_assignment_by_type_and_stage(event_type: EventType, stage: str, expected: bool) -> None:
    assert follows_assignment(event_type.value, stage) is expected


def test_batch_assignment_after_later_rows() -> None:
    # Redeliveries can put a request's request.assigned behind its later events in one batch.
    envelopes = request_events("r1")
    builder = SignalBuilder()
    built = rows(envelopes[3:] + envelopes[:3], builder)
    signals = [row.signal for row in built if row.signal is not None]
    later = [signal.row for signal in signals if signal.row.type in LATER_TYPES]

    unassigned = builder.unassigned(signals)

    assert unassigned == []
    assert [row.type for row in later] == LATER_TYPES
    for row in later:
        assert (row.experiment, row.variant, row.model, row.backend) == ASSIGNMENT, row.type


def test_unremembered_rows_returned_unassigned() -> None:
    envelopes = request_events("r1")
    built = rows(envelopes[3:], SignalBuilder())
    signals = [row.signal for row in built if row.signal is not None]

    unassigned = SignalBuilder().unassigned(signals)

    assert [row.type for row in unassigned] == LATER_TYPES
    assert [row.model for row in unassigned] == ["", "", ""]


def test_found_assignment_remembered() -> None:
    envelopes = request_events("r1")
    builder = SignalBuilder()
    first_batch = [row.signal for row in rows(envelopes[3:5], builder) if row.signal is not None]
    unassigned = builder.unassigned(first_batch)

    left = builder.assign(unassigned, {("acme", "r1"): Assignment(*ASSIGNMENT)})
    [delivered] = [row.signal for row in rows(envelopes[6:], builder) if row.signal is not None]

    assert left == []
    assert (delivered.row.experiment, delivered.row.model) == ("exp-1", "qwen-0.5b")
    assert [(row.variant, row.model) for row in unassigned] == [("small", "qwen-0.5b")]


@pytest.mark.clickhouse
async def test_store_finds_assignment_of_fresh_builder(store: EventStore) -> None:
    envelopes = request_events("r1")
    await store.insert_new(rows(envelopes[:3], SignalBuilder()))
    # Another tenant's request with the same id and another variant.
    other = _assigned("r1", "globex", VariantSpec(key="large", backend="vllm", model="qwen-7b"))
    await store.insert_new(rows([other], SignalBuilder()))
    later = [row.signal.row for row in rows(envelopes[3:], SignalBuilder()) if row.signal is not None]

    found = await store.stored_assignments(later)

    assert found == {("acme", "r1"): Assignment(*ASSIGNMENT)}


@pytest.mark.clickhouse
async def test_store_ignores_assignment_before_bound(store: EventStore) -> None:
    envelopes = request_events("r1")
    assigned_ts = envelopes[2].ts
    await store.insert_new(rows([at(envelope, assigned_ts) for envelope in envelopes[:3]], SignalBuilder()))
    # Seven hours later, beyond the six-hour bound.
    late = at(envelopes[6], assigned_ts + timedelta(hours=7))
    later = [row.signal.row for row in rows([late], SignalBuilder()) if row.signal is not None]

    found = await store.stored_assignments(later)

    assert found == {}


async def _publish(jetstream: JetStreamContext, spec: ConsumerSpec, envelopes: list[Envelope]) -> int:
    """Publish the envelopes in order and return the stream sequence of the last one."""
    subject = spec.filter_subject.replace(">", "event")
    sequence = 0
    for envelope in envelopes:
        sequence = (await jetstream.publish(subject, envelope.model_dump_json().encode(), stream=spec.stream)).seq
    return sequence


async def _store_all(
    nats_client: NatsClient, spec: ConsumerSpec, writer: EventBatchWriter, envelopes: list[Envelope]
) -> list[dict]:
    """Publish the envelopes, let `writer` store them, and return the captured log entries."""
    jetstream = nats_client.jetstream()
    last = await _publish(jetstream, spec, envelopes)
    puller = BatchPuller(
        spec, writer.store_batch, batch_size=100, batch_max_bytes=BATCH_MAX_BYTES, fetch_timeout_s=FETCH_TIMEOUT_S
    )
    with capture_logs() as logs:
        await puller.start(nats_client)
        try:
            await wait_until_settled(jetstream, spec, last, SETTLE_WAIT_S)
        finally:
            await puller.stop()
    return logs


def _sample(metrics: TelemetryMetrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(f"sluice_telemetry_{name}")


@pytest.mark.nats
@pytest.mark.clickhouse
async def test_remembered_assignments_need_no_lookup(
    nats_client: NatsClient, spec: ConsumerSpec, store: EventStore
) -> None:
    metrics = TelemetryMetrics()
    writer = EventBatchWriter(store, RetryDelay(initial_s=0.1, max_s=0.5), metrics=metrics)

    await _store_all(nats_client, spec, writer, request_events("r1") + _blocked("r2"))

    assert _sample(metrics, "assignment_lookups_total") == 0
    assert _sample(metrics, "assignments_not_found_total") == 0
    later = await signal_rows(store, "type IN {types:Array(String)}", {"types": LATER_TYPES})
    assert [(row["type"], _assignment(row)) for row in later] == [(name, ASSIGNMENT) for name in LATER_TYPES]


@pytest.mark.nats
@pytest.mark.clickhouse
async def test_writer_looks_up_stored_assignment(
    nats_client: NatsClient, spec: ConsumerSpec, store: EventStore
) -> None:
    envelopes = request_events("r1")
    await store.insert_new(rows(envelopes[:3], SignalBuilder()))
    metrics = TelemetryMetrics()
    writer = EventBatchWriter(store, RetryDelay(initial_s=0.1, max_s=0.5), metrics=metrics)

    await _store_all(nats_client, spec, writer, envelopes[3:])

    assert _sample(metrics, "assignment_lookups_total") == 1
    assert _sample(metrics, "assignments_not_found_total") == 0
    later = await signal_rows(store, "type IN {types:Array(String)}", {"types": LATER_TYPES})
    assert [(row["type"], _assignment(row)) for row in later] == [(name, ASSIGNMENT) for name in LATER_TYPES]


@pytest.mark.nats
@pytest.mark.clickhouse
async def test_unassigned_row_stored_without(
    nats_client: NatsClient, spec: ConsumerSpec, store: EventStore
) -> None:
    # The ingress cancelled the request during screening, so no assignment exists.
    payload = CancelledPayload(stage="ingress", reason="client_request")
    cancelled = accepted("r1").follow_up(EventType.CANCELLED, payload)
    metrics = TelemetryMetrics()
    writer = EventBatchWriter(store, RetryDelay(initial_s=0.1, max_s=0.5), metrics=metrics)

    logs = await _store_all(nats_client, spec, writer, [cancelled])

    assert _sample(metrics, "assignment_lookups_total") == 1
    assert _sample(metrics, "assignments_not_found_total") == 1
    assert _sample(metrics, "insert_retries_total") == 0
    [not_found] = [entry for entry in logs if entry["event"] == "signal_assignments_not_found"]
    assert (not_found["rows"], not_found["request_ids"]) == (1, ["r1"])
    [row] = await signal_rows(store)
    assert (row["type"], _assignment(row)) == ("request.cancelled", ("", "", "", ""))


@pytest.mark.nats
@pytest.mark.clickhouse
async def test_failed_lookup_retries_batch(nats_client: NatsClient, spec: ConsumerSpec, clickhouse_dsn: str) -> None:
    # Without migrations there is no request_signals table, so the lookup fails.
    store = EventStore.open(clickhouse_dsn, query_max_execution_time_s=5)
    metrics = TelemetryMetrics()
    writer = EventBatchWriter(store, RetryDelay(initial_s=60.0, max_s=60.0), metrics=metrics)
    puller = BatchPuller(
        spec, writer.store_batch, batch_size=100, batch_max_bytes=BATCH_MAX_BYTES, fetch_timeout_s=FETCH_TIMEOUT_S
    )
    await _publish(nats_client.jetstream(), spec, request_events("r1")[4:5])

    try:
        with capture_logs() as logs:
            await puller.start(nats_client)
            failed = await wait_for_log(logs, "event_batch_store_failed", SETTLE_WAIT_S)
            await puller.stop()
        info = await nats_client.jetstream().consumer_info(spec.stream, spec.durable)
    finally:
        store.close()

    assert [entry["events"] for entry in failed] == [1]
    assert failed[0]["error"].startswith("could not look up stored assignments")
    assert _sample(metrics, "insert_retries_total") == 1
    assert info.num_ack_pending == 1


@pytest.mark.nats
@pytest.mark.clickhouse
async def test_restarted_service_fills_assignment(nats_url: str, clickhouse_dsn: str, tmp_path: Path) -> None:
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    envelopes = request_events("r1", tenant=tenant)
    settings = Settings(nats_url=nats_url, clickhouse_dsn=clickhouse_dsn, data_dir=tmp_path)
    tuning = TelemetrySettings(fetch_timeout_s=0.1, retry_delay_initial_s=0.1, retry_delay_max_s=0.5)
    broker = make_broker(nats_url)
    await broker.connect()
    client = clickhouse_connect.get_client(dsn=clickhouse_dsn)
    try:
        # The first process stores accepted, screened and assigned, then stops.
        async with make_app(settings, tuning):
            await _publish_events(broker, envelopes[:3])
            assert await _signal_rows_stored(client, tenant, 3)
        # A new process has never seen request.assigned.
        async with make_app(settings, tuning):
            await _publish_events(broker, envelopes[3:])
            assert await _signal_rows_stored(client, tenant, 6)
        result = client.query(_LATER_ROWS_SQL, {"tenant": tenant, "types": LATER_TYPES})
    finally:
        client.close()
        await broker.stop()

    assert [(row[0], tuple(row[1:])) for row in result.result_rows] == [(name, ASSIGNMENT) for name in LATER_TYPES]


_LATER_ROWS_SQL = """
SELECT type, experiment, variant, model, backend FROM request_signals FINAL
WHERE tenant = {tenant:String} AND type IN {types:Array(String)}
ORDER BY ts
"""


async def _publish_events(broker: NatsBroker, envelopes: list[Envelope]) -> None:
    publisher = EventPublisher(broker)
    for envelope in envelopes:
        await publisher.publish(envelope)


async def _signal_rows_stored(client: Client, tenant: str, expected: int) -> bool:
    """Poll until the tenant has `expected` signal rows; return False after `SETTLE_WAIT_S`."""
    deadline = time.monotonic() + SETTLE_WAIT_S
    while time.monotonic() < deadline:
        result = await asyncio.to_thread(
            client.query, "SELECT count() FROM request_signals FINAL WHERE tenant = {tenant:String}", {"tenant": tenant}
        )
        if result.result_rows[0][0] == expected:
            return True
        await asyncio.sleep(0.05)
    return False

"""The ClickHouse adapter inserts each event id once and reads through a read-only client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import json
from datetime import datetime, timedelta, timezone

from services.telemetry.migrations import load_migrations
from services.telemetry.rows import EventRow, decode_event
from services.telemetry.store import EventStore
from shared.events import Envelope, EventType, FailedPayload, new_envelope
from shared.store_client import StoreQueryError, StoreUnavailable

pytestmark = pytest.mark.clickhouse


@pytest.fixture
async def store(clickhouse_dsn: str) -> AsyncIterator[EventStore]:
    store = EventStore.open(clickhouse_dsn, query_max_execution_time_s=5)
    await store.migrate(load_migrations())
    yield store
    store.close()


def _failed_envelope(request_id: str, tenant: str = "acme") -> Envelope:
    payload = FailedPayload(stage="inference", error_code="backend_error", message="backend returned 500")
    return new_envelope(EventType.FAILED, request_id=request_id, tenant=tenant, payload=payload)


def _row(envelope: Envelope) -> EventRow:
    return decode_event(envelope.model_dump_json().encode())


def _failed(request_id: str, tenant: str = "acme") -> EventRow:
    return _row(_failed_envelope(request_id, tenant))


async def _raw_count(store: EventStore) -> int:
    _, rows = await store.query("SELECT count() FROM events", {})
    return int(rows[0][0])


async def test_insert_returns_new_count(store: EventStore) -> None:
    inserted = await store.insert_new([_failed("r1"), _failed("r2")])

    assert inserted == 2
    assert await _raw_count(store) == 2


async def test_insert_skips_stored_ids(store: EventStore) -> None:
    await store.insert_new([_failed("r1")])

    inserted = await store.insert_new([_failed("r1"), _failed("r2")])

    assert inserted == 1
    assert await _raw_count(store) == 2


async def test_insert_keeps_one_copy_per_batch(store: EventStore) -> None:
    event = _failed("r1")

    inserted = await store.insert_new([event, event._replace()])

    assert inserted == 1
    assert await _raw_count(store) == 1


async def test_same_id_other_tenant_not_skipped(store: EventStore) -> None:
    # Event ids derive from the tenant, so equal ids of two tenants never occur;
    # the lookup is scoped by tenant all the same.
    event = _failed_envelope("r1", tenant="acme")
    await store.insert_new([_row(event)])

    inserted = await store.insert_new([_row(event.model_copy(update={"tenant": "globex"}))])

    assert inserted == 1


async def test_redelivered_stored_row_skipped(store: EventStore, clickhouse_dsn: str) -> None:
    # A second store has no memory of the first one's inserts, as after a restart.
    await store.insert_new([_failed("r1")])
    restarted = EventStore.open(clickhouse_dsn, query_max_execution_time_s=5)
    try:
        inserted = await restarted.insert_new([_failed("r2")], redelivered=[_failed("r1"), _failed("r3")])
    finally:
        restarted.close()

    assert inserted == 2
    assert await _raw_count(store) == 3


async def test_first_delivery_copy_collapses(store: EventStore, clickhouse_dsn: str) -> None:
    # Only redelivered rows are looked up, so a republished copy that this
    # store did not insert reaches the table, and FINAL returns it once.
    await store.insert_new([_failed("r1")])
    restarted = EventStore.open(clickhouse_dsn, query_max_execution_time_s=5)
    try:
        inserted = await restarted.insert_new([_failed("r1")])
    finally:
        restarted.close()

    assert inserted == 1
    assert await _raw_count(store) == 2
    _, rows = await store.query("SELECT count() FROM events FINAL", {})
    assert rows == [(1,)]


async def test_row_stored_with_columns(store: EventStore) -> None:
    envelope = _failed_envelope("r1").model_copy(
        update={
            "ts": datetime(2026, 3, 1, 12, 0, 0, 250, tzinfo=timezone(timedelta(hours=2))),
            "deadline": datetime(2026, 3, 1, 12, 5),
            "trace": {"traceparent": "00-abc-def-01"},
        }
    )
    await store.insert_new([_row(envelope)])

    columns, rows = await store.query("SELECT * EXCEPT inserted_at FROM events", {})
    stored = dict(zip(columns, rows[0], strict=True))

    assert stored["event_id"] == envelope.event_id
    assert stored["type"] == "request.failed"
    assert stored["schema_version"] == 1
    assert stored["request_id"] == "r1"
    assert stored["tenant"] == "acme"
    assert stored["ts"] == datetime(2026, 3, 1, 10, 0, 0, 250, tzinfo=timezone.utc)
    assert stored["deadline"] == datetime(2026, 3, 1, 12, 5, tzinfo=timezone.utc)
    assert stored["trace"] == {"traceparent": "00-abc-def-01"}
    assert json.loads(stored["payload"]) == envelope.payload


async def test_query_returns_columns_and_rows(store: EventStore) -> None:
    await store.insert_new([_failed("r1")])

    columns, rows = await store.query("SELECT request_id, type FROM events WHERE tenant = {t:String}", {"t": "acme"})

    assert columns == ["request_id", "type"]
    assert rows == [("r1", "request.failed")]


async def test_reader_rejects_writes(store: EventStore) -> None:
    with pytest.raises(StoreQueryError, match="readonly"):
        await store.query("INSERT INTO events (event_id) VALUES ('x')", {})

    assert await _raw_count(store) == 0


async def test_reader_rejects_setting_change(store: EventStore) -> None:
    with pytest.raises(StoreQueryError, match="readonly"):
        await store.query("SELECT 1 SETTINGS readonly = 0", {})


async def test_reader_rejects_file_access(store: EventStore) -> None:
    with pytest.raises(StoreQueryError, match="readonly"):
        await store.query("SELECT * FROM file('/etc/hostname', 'LineAsString')", {})


async def test_syntax_error_is_query_error(store: EventStore) -> None:
    with pytest.raises(StoreQueryError, match="SYNTAX_ERROR"):
        await store.query("SELEC 1", {})


async def test_closed_store_is_unavailable(clickhouse_dsn: str) -> None:
    store = EventStore.open(clickhouse_dsn, query_max_execution_time_s=5)
    store.close()

    with pytest.raises(StoreUnavailable):
        await store.query("SELECT 1", {})
    with pytest.raises(StoreUnavailable):
        await store.insert_new([_failed("r1")])


async def test_missing_table_fails_insert(clickhouse_dsn: str) -> None:
    store = EventStore.open(clickhouse_dsn, query_max_execution_time_s=5)
    try:
        with pytest.raises(StoreUnavailable, match="could not insert events"):
            await store.insert_new([_failed("r1")])
    finally:
        store.close()

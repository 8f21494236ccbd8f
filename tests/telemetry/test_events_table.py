"""The `events` table keeps one row per event id under FINAL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client

from services.telemetry.migrations import apply_migrations, load_migrations
from services.telemetry.rows import EVENT_COLUMNS
from shared.events import Envelope, EventType, FailedPayload, new_envelope

pytestmark = pytest.mark.clickhouse

FINAL_COUNT = "SELECT count() FROM events FINAL WHERE tenant = {tenant:String}"


@pytest.fixture
def client(clickhouse_dsn: str) -> Iterator[Client]:
    client = clickhouse_connect.get_client(dsn=clickhouse_dsn)
    apply_migrations(client, load_migrations())
    yield client
    client.close()


def _failed_row(tenant: str, ts_shift: timedelta = timedelta(0)) -> list:
    payload = FailedPayload(stage="inference", error_code="backend_error", message="backend returned 500")
    envelope = new_envelope(EventType.FAILED, request_id="r1", tenant=tenant, payload=payload)
    return _row(envelope.model_copy(update={"ts": envelope.ts.replace(hour=12) + ts_shift}))


def _row(envelope: Envelope) -> list:
    # The values in EVENT_COLUMNS order, as the telemetry service stores them.
    return [
        envelope.event_id,
        envelope.type.value,
        envelope.schema_version,
        envelope.request_id,
        envelope.tenant,
        envelope.route,
        envelope.ts,
        envelope.deadline,
        envelope.trace,
        json.dumps(envelope.payload),
    ]


def _insert(client: Client, row: list) -> None:
    # One insert per copy, as two deliveries would arrive.
    client.insert("events", [row], column_names=list(EVENT_COLUMNS))


def test_redelivered_copy_collapses(client: Client) -> None:
    row = _failed_row("tenant-redelivered")
    _insert(client, row)
    _insert(client, row)

    assert client.command("SELECT count() FROM events WHERE tenant = 'tenant-redelivered'") == 2
    assert client.query(FINAL_COUNT, parameters={"tenant": "tenant-redelivered"}).result_rows == [(1,)]


def test_republished_copy_collapses_same_day(client: Client) -> None:
    _insert(client, _failed_row("tenant-republished"))
    _insert(client, _failed_row("tenant-republished", timedelta(minutes=3)))

    assert client.query(FINAL_COUNT, parameters={"tenant": "tenant-republished"}).result_rows == [(1,)]


def test_distinct_events_stay_apart(client: Client) -> None:
    _insert(client, _failed_row("tenant-distinct"))
    _insert(client, _failed_row("tenant-distinct-other"))

    assert client.query(FINAL_COUNT, parameters={"tenant": "tenant-distinct"}).result_rows == [(1,)]
    assert client.query(FINAL_COUNT, parameters={"tenant": "tenant-distinct-other"}).result_rows == [(1,)]

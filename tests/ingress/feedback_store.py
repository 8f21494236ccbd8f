"""A chDB store for the feedback tests, served over the store API, and helpers that fill it and read its feedback rows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from nats.aio.client import Client as NatsClient

from services.telemetry.migrations import load_migrations
from services.telemetry.signals import SignalBuilder
from services.telemetry.store import EventStore
from shared.events import Envelope, EventType

from tests.ingress.store_api import serving_store_api
from tests.ingress.support import read_events
from tests.telemetry.signal_events import accepted, at, rows

# chDB stops a query after this long; no query of these tests comes near it.
MAX_EXECUTION_TIME_S = 10
# The store API's analytics row cap, which these tests never reach.
ANALYTICS_MAX_RESULT_ROWS = 100


@asynccontextmanager
async def serving_feedback_store(nats_url: str, clickhouse_dsn: str) -> AsyncIterator[EventStore]:
    """Yield a migrated, empty store whose store API replies on `nats_url` until the block ends."""
    store = EventStore.open(clickhouse_dsn, query_max_execution_time_s=MAX_EXECUTION_TIME_S)
    try:
        await store.migrate(load_migrations())
        async with serving_store_api(nats_url, store, ANALYTICS_MAX_RESULT_ROWS):
            yield store
    finally:
        store.close()


async def store_events(store: EventStore, envelopes: list[Envelope]) -> None:
    """Insert `envelopes` as telemetry does, so the materialized views fire."""
    await store.insert_new(rows(envelopes, SignalBuilder()))


async def store_accepted(store: EventStore, tenant: str, request_id: str, ts: datetime) -> None:
    await store_events(store, [at(accepted(request_id, tenant=tenant), ts)])


async def store_published_feedback(store: EventStore, nats_client: NatsClient) -> list[Envelope]:
    """Insert every feedback event in the EVENTS stream into `store`; return them."""
    envelopes = await read_events(nats_client, EventType.FEEDBACK)
    await store_events(store, envelopes)
    return envelopes


async def feedback_rows(store: EventStore, request_id: str) -> list[dict[str, Any]]:
    """Return the rows of `feedback FINAL` for `request_id`, as dicts."""
    sql = "SELECT * FROM feedback FINAL WHERE request_id = {request_id:String} ORDER BY ts"
    columns, result = await store.query(sql, {"request_id": request_id})
    return [dict(zip(columns, values)) for values in result]

"""The ClickHouse adapter of the telemetry service: the only module that talks to clickhouse-connect.

It opens two clients on the same DSN. The writer applies migrations and
inserts events. The reader serves the store API with the session settings
`readonly=1` and `max_execution_time`, so no statement it runs can write,
whatever its SQL. clickhouse-connect has no async client for chDB,
so each client's calls run on that client's own single worker thread: calls
on one client run one after another, and `close` waits for a running call to
finish before it closes the client.

Events go in as JSONEachRow lines (`rows.EventRow.line`), so ClickHouse
parses them in C++ rather than clickhouse-connect serialising Python values.
The signal rows of a batch (`signals.Signal.line`) go into `request_signals`
the same way, in a second insert after the events insert.

Exactly once. JetStream delivers at least once, so the writer itself skips
event ids that are stored already (`insert_new`). ClickHouse's insert
deduplication is not used, because it drops a repeated insert only when the
block hash or `insert_deduplication_token` matches an earlier insert. After a
crash, JetStream redelivers the unacked messages in batches grouped
differently and mixed with new messages, so no block repeats. A copy that still
reaches the table has the same sorting key as the original, and
ReplacingMergeTree collapses such copies in background merges, which may run
at any later time. So "exactly once" is true under FINAL, and the crash tests
count with this query:

    SELECT count(), uniqExact(event_id) FROM events FINAL WHERE tenant = {tenant:String}

Both values equal the number of distinct events published for the tenant.
The exception is a copy that a stage republished on a later day than the
original: its sorting key differs, so it stays a second row even under FINAL.
Signal rows are skipped by the same rules, checked against the signal rows
stored, so a batch whose events insert succeeded and whose signals insert
failed inserts only its signal rows when it is delivered again.

clickhouse-connect's errors are translated here into `StoreQueryError` (the
server rejected the query: it carries a ClickHouse error code) and
`StoreUnavailable` (everything else), with the original as the cause.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import Error as ClickHouseDriverError

from services.telemetry.assignments import Assignment, RequestKey
from services.telemetry.migrations import Migration, apply_migrations
from services.telemetry.recent_ids import EventKey, RecentIds
from services.telemetry.rows import EVENT_COLUMNS, MIN_STORED_TIMESTAMP, EventRow
from services.telemetry.signals import SIGNAL_COLUMNS, SignalRow
from shared.events import EventType
from shared.store_client import StoreQueryError, StoreUnavailable

T = TypeVar("T")

# UTC columns come back as aware datetimes, so the store API can write them
# with their offset.
_TZ_MODE = "aware"

# Before inserting redelivered events, look for their event ids among rows of
# their tenants from one day before the earliest of them onward. A copy of an
# event is the same message redelivered (same ts) or a stage publishing again
# within the request deadline, so one day covers both. The tenant and time
# bounds let ClickHouse skip older parts and granules through the sorting key.
_DUPLICATE_LOOKBACK = timedelta(days=1)

# Look for the request.assigned rows of requests from this long before the
# earliest row that needs one. A request's later events come within its
# timeout after its assignment (SLUICE_REQUEST_TIMEOUT_S, 300 s by default),
# so six hours also cover much longer timeouts and clock skew between hosts.
# With the hour second in the sorting key, ClickHouse then reads about seven
# hours of the tenants' rows rather than every partition.
_ASSIGNMENT_LOOKBACK = timedelta(hours=6)

# How many of its last inserted events a store remembers, to skip copies
# without a lookup: about 25 MB of Python objects. At a thousand events per
# second that covers the last 100 s, at 50,000 per second the last 2 s.
RECENT_IDS_MAX = 100_000

# The lines carry timestamps as RFC 3339 with a `Z` or an offset, which the
# `basic` parser (an HTTP server's default) rejects, and each payload as a
# JSON object that the String column stores as its text. A batch has no two
# rows of one event, so the replacing merge that `optimize_on_insert` runs
# on each insert finds nothing. Parsing in one thread, and skipping that
# merge, took 4.7 instead of 5.5 µs of CPU per event for inserts of 10,000
# rows on two cores (chDB 4.4).
_INSERT_SETTINGS = {
    "date_time_input_format": "best_effort",
    "input_format_json_read_objects_as_strings": 1,
    "input_format_parallel_parsing": 0,
    "optimize_on_insert": 0,
}

_EVENTS_TABLE = "events"
_SIGNALS_TABLE = "request_signals"

_STORED_IDS_CONDITION = """
WHERE tenant IN {tenants:Array(String)}
  AND ts >= {earliest:DateTime64(6, 'UTC')}
  AND event_id IN {event_ids:Array(String)}
"""
# Per table, the query of which keys among `event_ids` the table stores.
_STORED_IDS_SQL = {
    table: f"SELECT DISTINCT tenant, event_id FROM {table}{_STORED_IDS_CONDITION}"
    for table in (_EVENTS_TABLE, _SIGNALS_TABLE)
}

# The request.assigned rows of `request_ids`, one per request. An
# assignment's copies (a redelivered event inserted twice before a merge)
# are the same event, and the last inserted is the one that
# ReplacingMergeTree keeps.
_STORED_ASSIGNMENTS_SQL = """
SELECT tenant, request_id, experiment, variant, model, backend
FROM request_signals
WHERE tenant IN {tenants:Array(String)}
  AND ts >= {earliest:DateTime64(6, 'UTC')}
  AND request_id IN {request_ids:Array(String)}
  AND type = {assigned_type:String}
ORDER BY inserted_at DESC
LIMIT 1 BY tenant, request_id
"""


class EventStore:
    """Inserts events and runs read-only queries. Call `close` when done, because chDB opens one path per process."""

    def __init__(self, writer: Client, reader: Client) -> None:
        self._writer = writer
        self._reader = reader
        self._writer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse-writer")
        self._reader_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse-reader")
        self._recent_ids = RecentIds(RECENT_IDS_MAX)
        self._recent_signal_ids = RecentIds(RECENT_IDS_MAX)
        self._closed = False

    @classmethod
    def open(cls, dsn: str, *, query_max_execution_time_s: int) -> EventStore:
        """Connect both clients to `dsn` (`chdb:///PATH` or `http://host:8123/db`); raises `StoreUnavailable`."""
        with _unavailable_on_error("open ClickHouse"):
            writer = clickhouse_connect.get_client(dsn=dsn, tz_mode=_TZ_MODE)
        try:
            with _unavailable_on_error("open the read-only ClickHouse client"):
                settings = _reader_settings(query_max_execution_time_s)
                reader = clickhouse_connect.get_client(dsn=dsn, tz_mode=_TZ_MODE, settings=settings)
        except StoreUnavailable:
            writer.close()
            raise
        return cls(writer, reader)

    async def migrate(self, migrations: list[Migration]) -> list[int]:
        """Apply the migrations not applied yet; return their versions. Raises `StoreUnavailable`."""
        with _unavailable_on_error("apply migrations"):
            return await self._call(self._writer_thread, apply_migrations, self._writer, migrations)

    async def insert_new(self, rows: list[EventRow], *, redelivered: list[EventRow] | None = None) -> int:
        """Insert the new events, then their signal rows, one insert each; return how many events were inserted.

        A row is skipped when an earlier row of the call has its tenant and
        event id, or when this store inserted that key among its last
        `RECENT_IDS_MAX` rows. The rows in `redelivered` may also have been
        inserted by an earlier delivery whose ack was lost, perhaps by another
        process, so their keys are looked up in ClickHouse as well. Any other
        copy is inserted, and ReplacingMergeTree collapses it under FINAL.
        Signal rows are skipped the same way, against the signal rows stored.

        Raises `StoreUnavailable` when a lookup or an insert fails. Each
        table may then hold the batch in full or not at all, and inserting
        it again is safe either way.
        """
        redelivered = redelivered or []
        arrived = redelivered + rows
        redelivered_keys = {(row.tenant, row.event_id) for row in redelivered}
        with _unavailable_on_error("insert events"):
            events = await self._new_rows(arrived, redelivered_keys, _EVENTS_TABLE, self._recent_ids)
            if events:
                await self._call(self._writer_thread, self._insert_events, list(events.values()))
        self._recent_ids.add_all(events)
        with _unavailable_on_error("insert signal rows"):
            with_signal = [row for row in arrived if row.signal is not None]
            signals = await self._new_rows(with_signal, redelivered_keys, _SIGNALS_TABLE, self._recent_signal_ids)
            if signals:
                await self._call(self._writer_thread, self._insert_signals, list(signals.values()))
        self._recent_signal_ids.add_all(signals)
        return len(events)

    async def stored_assignments(self, rows: Sequence[SignalRow]) -> dict[RequestKey, Assignment]:
        """Look up the stored request.assigned rows of the rows' requests in one query; return the assignments found.

        Only assignments from `_ASSIGNMENT_LOOKBACK` before the earliest row
        onward are found. The query runs on the writer's thread, after this
        store's earlier inserts. Raises `StoreUnavailable` when it fails.
        """
        if not rows:
            return {}
        with _unavailable_on_error("look up stored assignments"):
            return await self._call(self._writer_thread, self._stored_assignments, rows)

    async def query(self, sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run `sql` on the read-only client; return column names and rows.

        Raises `StoreQueryError` when ClickHouse rejects the query and
        `StoreUnavailable` when it cannot run it.
        """
        try:
            result = await self._call(self._reader_thread, self._reader.query, sql, parameters)
        except ClickHouseDriverError as error:
            raise _query_error(error) from error
        return list(result.column_names), list(result.result_rows)

    def close(self) -> None:
        """Wait for running calls, then close both clients; later calls raise `StoreUnavailable`. Blocks."""
        self._closed = True
        for thread in (self._reader_thread, self._writer_thread):
            thread.shutdown(wait=True, cancel_futures=True)
        for client in (self._reader, self._writer):
            client.close()

    async def _call(self, thread: ThreadPoolExecutor, function: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreUnavailable("the event store is closed; the telemetry service is stopping")
        return await asyncio.get_running_loop().run_in_executor(thread, functools.partial(function, *args))

    async def _new_rows(
        self, rows: list[EventRow], keys_to_check: set[EventKey], table: str, recent_ids: RecentIds
    ) -> dict[EventKey, EventRow]:
        # The first row of each key wins; later rows are the same event.
        firsts: dict[EventKey, EventRow] = {}
        for row in rows:
            key = (row.tenant, row.event_id)
            if key not in firsts and key not in recent_ids:
                firsts[key] = row
        checked = [row for key, row in firsts.items() if key in keys_to_check]
        if not checked:
            return firsts
        stored = await self._call(self._writer_thread, self._stored_keys, table, checked)
        recent_ids.add_all(stored)
        return {key: row for key, row in firsts.items() if key not in stored}

    def _insert_events(self, rows: list[EventRow]) -> None:
        block = b"\n".join(row.line for row in rows)
        self._writer.raw_insert(_EVENTS_TABLE, EVENT_COLUMNS, block, settings=_INSERT_SETTINGS, fmt="JSONEachRow")

    def _insert_signals(self, rows: list[EventRow]) -> None:
        block = b"\n".join(row.signal.line() for row in rows if row.signal is not None)
        self._writer.raw_insert(_SIGNALS_TABLE, SIGNAL_COLUMNS, block, settings=_INSERT_SETTINGS, fmt="JSONEachRow")

    def _stored_keys(self, table: str, rows: list[EventRow]) -> set[EventKey]:
        # NOTE: ClickHouse reads every event id of the tenants' rows since the
        # lookback bound, because event_id comes last in the sorting key, so a
        # lookup costs time in proportion to a day's events. That is why only
        # redelivered rows are looked up.
        earliest = max(min(row.ts for row in rows) - _DUPLICATE_LOOKBACK, MIN_STORED_TIMESTAMP)
        parameters = {
            "tenants": sorted({row.tenant for row in rows}),
            "earliest": earliest,
            "event_ids": [row.event_id for row in rows],
        }
        result = self._writer.query(_STORED_IDS_SQL[table], parameters=parameters)
        return {(tenant, event_id) for tenant, event_id in result.result_rows}

    def _stored_assignments(self, rows: Sequence[SignalRow]) -> dict[RequestKey, Assignment]:
        keys = {(row.tenant, row.request_id) for row in rows}
        earliest = max(min(row.ts for row in rows) - _ASSIGNMENT_LOOKBACK, MIN_STORED_TIMESTAMP)
        parameters = {
            "tenants": sorted({tenant for tenant, _ in keys}),
            "earliest": earliest,
            "request_ids": sorted({request_id for _, request_id in keys}),
            "assigned_type": EventType.ASSIGNED.value,
        }
        result = self._writer.query(_STORED_ASSIGNMENTS_SQL, parameters=parameters)
        # The query matches every pairing of the tenants and request ids, so
        # a request id that another tenant also uses is filtered out here.
        found = {(tenant, request_id): Assignment(*values) for tenant, request_id, *values in result.result_rows}
        return {key: assignment for key, assignment in found.items() if key in keys}


def _reader_settings(query_max_execution_time_s: int) -> dict[str, Any]:
    # `readonly` comes last because once it is set, the session rejects any
    # other setting change. For the same reason this client sends no
    # per-query settings.
    # NOTE: tested with chDB only. Over HTTP, clickhouse-connect sends both
    # settings with every request; that a server accepts the pair is untested.
    return {"max_execution_time": query_max_execution_time_s, "readonly": 1}


@contextmanager
def _unavailable_on_error(action: str) -> Iterator[None]:
    try:
        yield
    except ClickHouseDriverError as error:
        raise StoreUnavailable(f"could not {action}: {error}") from error


def _query_error(error: ClickHouseDriverError) -> StoreQueryError | StoreUnavailable:
    # A ClickHouse error code means the server ran and rejected the query
    # (syntax, unknown column, read-only, time limit). Without one, the
    # request did not reach a working server.
    if error.code is not None:
        return StoreQueryError(str(error))
    return StoreUnavailable(f"ClickHouse could not run the query: {error}")

"""Analytics queries on a real chDB store: hostile SQL changes nothing, a tenant reads only its rows, caps hold."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client

from services.telemetry.query_api import StoreQueryHandler
from services.telemetry.store import EventStore
from tests.telemetry.analytics_support import HOSTILE_QUERIES, ROWS_BY_TENANT, open_seeded_store

pytestmark = pytest.mark.clickhouse

# Large enough for any page of these tests.
MAX_REPLY_BYTES = 1_000_000
# Small caps, so that the tests reach them with a few rows and a second of CPU.
MAX_RESULT_ROWS = 5
MAX_EXECUTION_TIME_S = 1


@pytest.fixture
async def store(clickhouse_dsn: str) -> AsyncIterator[EventStore]:
    store = await open_seeded_store(clickhouse_dsn, query_max_execution_time_s=MAX_EXECUTION_TIME_S)
    yield store
    store.close()


@pytest.fixture
def inspector(clickhouse_dsn: str) -> Iterator[Client]:
    """A client with full rights on the test database, to look at the store after a query."""
    client = clickhouse_connect.get_client(dsn=clickhouse_dsn)
    yield client
    client.close()


@pytest.fixture
def handler(store: EventStore) -> StoreQueryHandler:
    return StoreQueryHandler(store, MAX_REPLY_BYTES, analytics_max_result_rows=MAX_RESULT_ROWS)


async def _ask(handler: StoreQueryHandler, sql: str, tenant: str = "acme", **fields: Any) -> dict[str, Any]:
    request = {"sql": sql, "confine_to_tenant": tenant, **fields}
    return json.loads(await handler.reply(json.dumps(request).encode()))


def _rows_by_tenant(client: Client) -> dict[str, int]:
    result = client.query("SELECT tenant, count() FROM events GROUP BY tenant")
    return dict(result.result_rows)


@pytest.mark.parametrize(("sql", "message"), HOSTILE_QUERIES)
async def test_hostile_query_rejected_and_harmless(
    handler: StoreQueryHandler, inspector: Client, sql: str, message: str
) -> None:
    reply = await _ask(handler, sql)

    assert reply["error"]["code"] == "invalid_query"
    assert message in reply["error"]["message"]
    assert _rows_by_tenant(inspector) == ROWS_BY_TENANT
    assert inspector.command("EXISTS TABLE events") == 1


async def test_outfile_not_written(handler: StoreQueryHandler, tmp_path: Path) -> None:
    target = tmp_path / "out.csv"

    reply = await _ask(handler, f"SELECT * FROM events INTO OUTFILE '{target}'")

    assert reply["error"]["code"] == "invalid_query"
    assert not target.exists()


async def test_unconfined_outfile_not_written(handler: StoreQueryHandler, tmp_path: Path) -> None:
    """The store API's own callers, which read every tenant, cannot write a file either."""
    target = tmp_path / "out.csv"
    request = {"sql": f"SELECT 1 INTO OUTFILE '{target}'"}

    reply = json.loads(await handler.reply(json.dumps(request).encode()))

    assert reply["error"]["code"] == "invalid_query"
    assert "INTO OUTFILE" in reply["error"]["message"]
    assert not target.exists()


@pytest.mark.parametrize(("tenant", "count"), ROWS_BY_TENANT.items())
async def test_tenant_counts_own_rows(handler: StoreQueryHandler, tenant: str, count: int) -> None:
    reply = await _ask(handler, "SELECT count() FROM events", tenant=tenant)

    assert reply["rows"] == [[count]]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count() FROM events WHERE tenant = 'globex'",
        "SELECT count() FROM events AS e WHERE e.tenant != 'acme'",
        "SELECT count() FROM events FINAL WHERE tenant = 'globex'",
        "SELECT count() FROM (SELECT * FROM events WHERE tenant = 'globex')",
        "SELECT count() FROM events WHERE request_id IN (SELECT request_id FROM events WHERE tenant = 'globex')",
        "WITH others AS (SELECT * FROM events WHERE tenant = 'globex') SELECT count() FROM others",
        "SELECT count() FROM events WHERE tenant = {other:String}",
    ],
)
async def test_other_tenant_rows_invisible(handler: StoreQueryHandler, sql: str) -> None:
    reply = await _ask(handler, sql, parameters={"other": "globex"} if "{other" in sql else {})

    assert reply["rows"] == [[0]]


async def test_or_true_sees_own_rows(handler: StoreQueryHandler) -> None:
    reply = await _ask(handler, "SELECT DISTINCT tenant FROM events WHERE tenant = 'globex' OR 1 = 1")

    assert reply["rows"] == [["acme"]]


async def test_join_stays_confined(handler: StoreQueryHandler) -> None:
    sql = "SELECT count() FROM events AS a JOIN events AS b ON a.request_id = b.request_id"

    reply = await _ask(handler, sql, tenant="globex")

    assert reply["rows"] == [[2]]


async def test_reserved_parameter_rejected(handler: StoreQueryHandler) -> None:
    sql = "SELECT count() FROM events WHERE tenant = {sluice_tenant:String}"

    reply = await _ask(handler, sql, parameters={"sluice_tenant": "globex"})

    assert "reserved" in reply["error"]["message"]


async def test_result_within_cap_served(handler: StoreQueryHandler) -> None:
    reply = await _ask(handler, "SELECT number FROM numbers(5)")

    assert reply["rows"] == [[n] for n in range(5)]
    assert reply["next_offset"] is None


async def test_result_over_cap_rejected(handler: StoreQueryHandler) -> None:
    reply = await _ask(handler, "SELECT number FROM numbers(6)")

    assert reply["error"]["code"] == "invalid_query"
    assert "more than 5 rows, the analytics row cap" in reply["error"]["message"]


async def test_last_page_over_cap_rejected(handler: StoreQueryHandler) -> None:
    first = await _ask(handler, "SELECT number FROM numbers(6) ORDER BY number", page_size=2, offset=2)
    last = await _ask(handler, "SELECT number FROM numbers(6) ORDER BY number", page_size=2, offset=4)

    assert first["rows"] == [[2], [3]]
    assert first["next_offset"] == 4
    assert "more than 5 rows" in last["error"]["message"]


async def test_offset_past_cap_rejected(handler: StoreQueryHandler) -> None:
    reply = await _ask(handler, "SELECT number FROM numbers(3)", offset=5)

    assert "offset 5 is at or past the analytics row cap of 5 rows" in reply["error"]["message"]


async def test_slow_query_stopped(handler: StoreQueryHandler) -> None:
    # Hashing every number never ends within the second the store allows.
    sql = "SELECT count() FROM numbers(1000000000000) WHERE sipHash64(number) = 0"

    reply = await _ask(handler, sql)

    assert reply["error"]["code"] == "invalid_query"
    assert "TIMEOUT_EXCEEDED" in reply["error"]["message"]


async def test_unconfined_query_reads_every_tenant(handler: StoreQueryHandler) -> None:
    request = {"sql": "SELECT count() FROM events"}

    reply = json.loads(await handler.reply(json.dumps(request).encode()))

    assert reply["rows"] == [[sum(ROWS_BY_TENANT.values())]]

"""The store API validates, pages and encodes read-only queries."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from datetime import date, datetime, timezone
from decimal import Decimal
from ipaddress import IPv4Address
from typing import Any
from uuid import UUID

import clickhouse_connect
import nats
import pytest
from nats.aio.client import Client as NatsClient

from services.telemetry.query_api import build_page, json_value, paged_sql, parse_request
from shared.settings import Settings
from shared.store_client import StoreQuery, StoreQueryError
from shared.subjects import STORE_QUERY_SUBJECT

REQUEST_TIMEOUT_S = 10.0


def _request(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "  select 1",
        "WITH 1 AS x SELECT x",
        "-- a comment\nSELECT 1",
        "/* block */ (SELECT 1)",
    ],
)
def test_read_statements_accepted(sql: str) -> None:
    assert parse_request(_request(sql=sql)).sql == sql


@pytest.mark.parametrize(
    ("sql", "keyword"),
    [
        ("INSERT INTO events VALUES ('x')", "INSERT"),
        ("drop table events", "DROP"),
        ("-- SELECT\nALTER TABLE events DELETE WHERE 1", "ALTER"),
        ("SHOW TABLES", "SHOW"),
    ],
)
def test_other_statements_rejected(sql: str, keyword: str) -> None:
    with pytest.raises(StoreQueryError, match=f"starts with '{keyword}'"):
        parse_request(_request(sql=sql))


def test_invalid_json_rejected() -> None:
    with pytest.raises(StoreQueryError, match="invalid store query"):
        parse_request(b"{not json")


def test_page_size_above_max_rejected() -> None:
    with pytest.raises(StoreQueryError, match="page_size"):
        parse_request(_request(sql="SELECT 1", page_size=10_001))


def test_negative_offset_rejected() -> None:
    with pytest.raises(StoreQueryError, match="offset"):
        parse_request(_request(sql="SELECT 1", offset=-1))


def test_unknown_field_rejected() -> None:
    with pytest.raises(StoreQueryError, match="query: Extra inputs"):
        parse_request(_request(sql="SELECT 1", query="SELECT 2"))


def test_parameters_need_placeholders() -> None:
    with pytest.raises(StoreQueryError, match=r"\['tenant'\] are given but the SQL has no"):
        parse_request(_request(sql="SELECT 1 WHERE 'acme' = %(tenant)s", parameters={"tenant": "acme"}))


def test_parameter_name_must_be_identifier() -> None:
    with pytest.raises(StoreQueryError, match="not an identifier"):
        parse_request(_request(sql="SELECT {x:String}", parameters={"$x$": "a"}))


def test_paged_sql_asks_one_extra_row() -> None:
    request = StoreQuery(sql="SELECT 1; ", page_size=10, offset=20)

    assert paged_sql(request) == "SELECT * FROM (\nSELECT 1\n) LIMIT 11 OFFSET 20"


def test_page_with_extra_row_has_next_offset() -> None:
    request = StoreQuery(sql="SELECT 1", page_size=2, offset=4)

    page = build_page(["n"], [(4,), (5,), (6,)], request, max_reply_bytes=10_000)

    assert page == {"columns": ["n"], "rows": [[4], [5]], "next_offset": 6}


def test_last_page_has_no_next_offset() -> None:
    request = StoreQuery(sql="SELECT 1", page_size=2, offset=4)

    page = build_page(["n"], [(4,)], request, max_reply_bytes=10_000)

    assert page["next_offset"] is None


def test_page_cut_to_reply_size() -> None:
    request = StoreQuery(sql="SELECT 1", page_size=100)
    rows = [("x" * 100,) for _ in range(100)]

    page = build_page(["text"], rows, request, max_reply_bytes=1_000)

    assert 0 < len(page["rows"]) < 100
    assert page["next_offset"] == len(page["rows"])
    assert len(json.dumps(page, separators=(",", ":"))) <= 1_000


def test_row_larger_than_reply_rejected() -> None:
    request = StoreQuery(sql="SELECT 1", offset=3)

    with pytest.raises(StoreQueryError, match="row at offset 3 does not fit"):
        build_page(["text"], [("x" * 2_000,)], request, max_reply_bytes=1_000)


def test_json_value_converts_clickhouse_types() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=timezone.utc)

    assert json_value(moment) == "2026-01-02T03:04:05.600000+00:00"
    assert json_value(date(2026, 1, 2)) == "2026-01-02"
    assert json_value(Decimal("1.50")) == "1.50"
    assert json_value(UUID(int=1)) == "00000000-0000-0000-0000-000000000001"
    assert json_value(IPv4Address("10.0.0.1")) == "10.0.0.1"
    assert json_value(math.nan) is None
    assert json_value((1, [moment])) == [1, ["2026-01-02T03:04:05.600000+00:00"]]
    assert json_value({1: "a"}) == {"1": "a"}


@pytest.fixture
async def nats_client(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


async def _ask(client: NatsClient, **fields: Any) -> dict[str, Any]:
    reply = await client.request(STORE_QUERY_SUBJECT, _request(**fields), timeout=REQUEST_TIMEOUT_S)
    return json.loads(reply.data)


@pytest.mark.nats
@pytest.mark.clickhouse
async def test_api_pages_ordered_rows(telemetry_app: Settings, nats_client: NatsClient) -> None:
    sql = "SELECT number AS n FROM numbers({count:UInt32}) ORDER BY n DESC"

    first = await _ask(nats_client, sql=sql, parameters={"count": 5}, page_size=2)
    last = await _ask(nats_client, sql=sql, parameters={"count": 5}, page_size=2, offset=4)

    assert first == {"columns": ["n"], "rows": [[4], [3]], "next_offset": 2}
    assert last == {"columns": ["n"], "rows": [[0]], "next_offset": None}


@pytest.mark.nats
@pytest.mark.clickhouse
async def test_api_rejects_insert(telemetry_app: Settings, nats_client: NatsClient) -> None:
    reply = await _ask(nats_client, sql="INSERT INTO events (event_id) VALUES ('x')")

    assert reply["error"]["code"] == "invalid_query"
    assert "starts with 'INSERT'" in reply["error"]["message"]


@pytest.mark.nats
@pytest.mark.clickhouse
async def test_api_rejects_drop(telemetry_app: Settings, nats_client: NatsClient) -> None:
    reply = await _ask(nats_client, sql="DROP TABLE events")

    assert reply["error"]["code"] == "invalid_query"
    sql = "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'events'"
    count = await _ask(nats_client, sql=sql)
    assert count["rows"] == [[1]]


@pytest.mark.nats
@pytest.mark.clickhouse
async def test_api_reports_unknown_column(telemetry_app: Settings, nats_client: NatsClient) -> None:
    reply = await _ask(nats_client, sql="SELECT no_such_column FROM events")

    assert reply["error"]["code"] == "invalid_query"
    assert "no_such_column" in reply["error"]["message"]


@pytest.mark.nats
@pytest.mark.clickhouse
async def test_api_replies_iso_datetimes(telemetry_app: Settings, nats_client: NatsClient) -> None:
    reply = await _ask(nats_client, sql="SELECT toDateTime64('2026-01-02 03:04:05.25', 6, 'UTC') AS ts")

    assert reply["rows"] == [["2026-01-02T03:04:05.250000+00:00"]]


@pytest.mark.nats
@pytest.mark.clickhouse
async def test_api_confines_tenant_query(telemetry_app: Settings, nats_client: NatsClient) -> None:
    writer = clickhouse_connect.get_client(dsn=telemetry_app.resolved_clickhouse_dsn)
    try:
        writer.command("INSERT INTO events (event_id, request_id, tenant, ts) VALUES ('e1', 'r1', 'globex', now64(6))")
    finally:
        writer.close()
    sql = "SELECT count() FROM events WHERE tenant = 'globex' OR 1 = 1"

    confined = await _ask(nats_client, sql=sql, confine_to_tenant="acme")
    unconfined = await _ask(nats_client, sql=sql)

    assert confined == {"columns": ["count()"], "rows": [[0]], "next_offset": None}
    assert unconfined["rows"] == [[1]]


@pytest.mark.nats
@pytest.mark.clickhouse
async def test_api_rejects_tenant_system_query(telemetry_app: Settings, nats_client: NatsClient) -> None:
    reply = await _ask(nats_client, sql="SELECT name FROM system.tables", confine_to_tenant="acme")

    assert reply["error"]["code"] == "invalid_query"
    assert "system.tables is a system table" in reply["error"]["message"]

"""The store client sends queries to the telemetry service and raises one error tree."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from shared.settings import Settings
from shared.store_client import StoreClient, StoreError, StoreQueryError, StoreUnavailable

pytestmark = pytest.mark.nats

# A subject no telemetry service listens on, for replies the tests script.
SCRIPTED_SUBJECT = "test.store.scripted"


@pytest.fixture
async def nats_client(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


async def _reply_with(client: NatsClient, body: dict | bytes) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()

    async def respond(message: Msg) -> None:
        await message.respond(data)

    await client.subscribe(SCRIPTED_SUBJECT, cb=respond)


@pytest.mark.clickhouse
async def test_query_returns_page(telemetry_app: Settings, nats_client: NatsClient) -> None:
    store = StoreClient(nats_client)

    page = await store.query("SELECT number AS n FROM numbers({count:UInt8})", {"count": 3}, page_size=2)

    assert page.columns == ["n"]
    assert page.rows == [[0], [1]]
    assert page.next_offset == 2


@pytest.mark.clickhouse
async def test_query_all_follows_pages(telemetry_app: Settings, nats_client: NatsClient) -> None:
    store = StoreClient(nats_client)

    rows = await store.query_all("SELECT number FROM numbers(25) ORDER BY number", page_size=10)

    assert rows == [[n] for n in range(25)]


@pytest.mark.clickhouse
async def test_rejected_query_raises_query_error(telemetry_app: Settings, nats_client: NatsClient) -> None:
    store = StoreClient(nats_client)

    with pytest.raises(StoreQueryError, match="starts with 'DELETE'"):
        await store.query("DELETE FROM events WHERE 1")


async def test_bad_page_size_fails_before_sending(nats_client: NatsClient) -> None:
    # No subscriber listens on the subject, so a sent request would raise StoreUnavailable.
    store = StoreClient(nats_client, subject=SCRIPTED_SUBJECT)

    with pytest.raises(StoreQueryError, match="page_size"):
        await store.query("SELECT 1", page_size=0)


async def test_no_listener_raises_unavailable(nats_client: NatsClient) -> None:
    store = StoreClient(nats_client, subject=SCRIPTED_SUBJECT)

    with pytest.raises(StoreUnavailable, match="no telemetry service listens"):
        await store.query("SELECT 1")


async def test_silent_listener_raises_unavailable(nats_client: NatsClient) -> None:
    await nats_client.subscribe(SCRIPTED_SUBJECT)
    store = StoreClient(nats_client, subject=SCRIPTED_SUBJECT)

    with pytest.raises(StoreUnavailable, match="no reply .* within 0.2 s"):
        await store.query("SELECT 1", timeout_s=0.2)


async def test_unavailable_reply_raises_unavailable(nats_client: NatsClient) -> None:
    await _reply_with(nats_client, {"error": {"code": "store_unavailable", "message": "ClickHouse is down"}})
    store = StoreClient(nats_client, subject=SCRIPTED_SUBJECT)

    with pytest.raises(StoreUnavailable, match="ClickHouse is down"):
        await store.query("SELECT 1")


async def test_invalid_json_reply_raises_store_error(nats_client: NatsClient) -> None:
    await _reply_with(nats_client, b"<html>")
    store = StoreClient(nats_client, subject=SCRIPTED_SUBJECT)

    with pytest.raises(StoreError, match="invalid JSON"):
        await store.query("SELECT 1")


async def test_stuck_offset_raises_store_error(nats_client: NatsClient) -> None:
    await _reply_with(nats_client, {"columns": ["n"], "rows": [], "next_offset": 0})
    store = StoreClient(nats_client, subject=SCRIPTED_SUBJECT)

    with pytest.raises(StoreError, match="next_offset 0 for a page at offset 0"):
        await store.query_all("SELECT 1")

"""The status record in a real Redis: forward-only status, tenant scoping, TTL."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as redis

from services.ingress.state_store import (
    RecordField,
    RequestStateStore,
    RequestStatus,
    StateUpdate,
    record_key,
    terminal_notice_key,
)

pytestmark = pytest.mark.redis

TTL_S = 600


@pytest.fixture
def store(redis_client: redis.Redis) -> RequestStateStore:
    return RequestStateStore(redis_client, TTL_S)


def _request_id() -> str:
    return uuid.uuid4().hex


async def test_status_moves_forward(store: RequestStateStore) -> None:
    request_id = _request_id()
    await store.apply("acme", request_id, StateUpdate(RequestStatus.SCREENING))

    status = await store.apply("acme", request_id, StateUpdate(RequestStatus.GENERATING))

    assert status is RequestStatus.GENERATING


async def test_status_never_moves_back(store: RequestStateStore) -> None:
    request_id = _request_id()
    await store.apply("acme", request_id, StateUpdate(RequestStatus.GENERATING))

    status = await store.apply("acme", request_id, StateUpdate(RequestStatus.QUEUED))

    assert status is RequestStatus.GENERATING


async def test_first_terminal_status_stays(store: RequestStateStore) -> None:
    request_id = _request_id()
    await store.apply("acme", request_id, StateUpdate(RequestStatus.COMPLETED))

    status = await store.apply("acme", request_id, StateUpdate(RequestStatus.FAILED))

    assert status is RequestStatus.COMPLETED


async def test_late_event_still_writes_fields(store: RequestStateStore) -> None:
    request_id = _request_id()
    await store.apply("acme", request_id, StateUpdate(RequestStatus.COMPLETED))

    await store.apply("acme", request_id, StateUpdate(RequestStatus.GENERATING, {RecordField.FIRST_TOKEN_AT: "t1"}))

    fields = await store.read("acme", request_id)
    assert fields is not None
    assert fields["first_token_at"] == "t1"
    assert fields["status"] == "completed"


async def test_record_invisible_to_other_tenant(store: RequestStateStore) -> None:
    request_id = _request_id()
    await store.apply("acme", request_id, StateUpdate(RequestStatus.SCREENING))

    assert await store.read("globex", request_id) is None
    assert await store.exists("globex", request_id) is False
    assert await store.exists("acme", request_id) is True


async def test_record_without_status_reads_absent(store: RequestStateStore) -> None:
    request_id = _request_id()

    await store.apply("acme", request_id, StateUpdate(None, {RecordField.TEXT: "late"}))

    assert await store.read("acme", request_id) is None


async def test_every_write_sets_ttl(store: RequestStateStore, redis_client: redis.Redis) -> None:
    request_id = _request_id()

    await store.apply("acme", request_id, StateUpdate(RequestStatus.SCREENING))

    ttl = await redis_client.ttl(record_key("acme", request_id))
    assert 0 < ttl <= TTL_S


async def test_wait_times_out_before_terminal(store: RequestStateStore) -> None:
    request_id = _request_id()
    await store.apply("acme", request_id, StateUpdate(RequestStatus.GENERATING))

    ended = await store.wait_until_terminal("acme", request_id, block_ms=50)

    assert ended is False


async def test_wait_returns_once_terminal(store: RequestStateStore) -> None:
    request_id = _request_id()
    await store.apply("acme", request_id, StateUpdate(RequestStatus.GENERATING))
    waiter = asyncio.create_task(store.wait_until_terminal("acme", request_id, block_ms=5_000))
    await asyncio.sleep(0.05)

    await store.apply("acme", request_id, StateUpdate(RequestStatus.COMPLETED))

    assert await asyncio.wait_for(waiter, timeout=2.0) is True
    assert await store.wait_until_terminal("acme", request_id, block_ms=50) is True


async def test_second_terminal_adds_no_notice(store: RequestStateStore, redis_client: redis.Redis) -> None:
    request_id = _request_id()
    await store.apply("acme", request_id, StateUpdate(RequestStatus.BLOCKED))

    await store.apply("acme", request_id, StateUpdate(RequestStatus.FAILED))

    assert await redis_client.xlen(terminal_notice_key("acme", request_id)) == 1
    assert 0 < await redis_client.ttl(terminal_notice_key("acme", request_id)) <= TTL_S


async def test_queued_updates_apply_in_order(store: RequestStateStore, redis_client: redis.Redis) -> None:
    request_id = _request_id()
    updates = [
        StateUpdate(RequestStatus.SCREENING, {RecordField.ACCEPTED_AT: "t1"}),
        StateUpdate(RequestStatus.QUEUED, {RecordField.VARIANT_KEY: "base"}),
        StateUpdate(RequestStatus.COMPLETED, {RecordField.TEXT: "done"}),
    ]

    async with redis_client.pipeline(transaction=False) as pipe:
        for update in updates:
            await store.queue_apply(pipe, "acme", request_id, update)
        await pipe.execute()

    record = await store.read("acme", request_id)
    assert record is not None
    assert record["status"] == RequestStatus.COMPLETED.value
    assert record["variant_key"] == "base"
    assert record["text"] == "done"

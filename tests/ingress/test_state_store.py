"""The status record in a real Redis: forward-only status, tenant scoping, TTL."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as redis

from services.ingress.state_store import RecordField, RequestStateStore, RequestStatus, StateUpdate, record_key

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

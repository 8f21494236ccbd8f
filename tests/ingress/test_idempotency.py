"""Idempotency keys in a real Redis: reservation, confirmation, release and their TTLs."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as redis

from services.ingress.idempotency import PENDING_RESERVATION_TTL_S, IdempotencyRecord, IdempotencyStore, idempotency_key

pytestmark = pytest.mark.redis

TTL_S = 3600


@pytest.fixture
def store(redis_client: redis.Redis) -> IdempotencyStore:
    return IdempotencyStore(redis_client, TTL_S)


def _key() -> str:
    return str(uuid.uuid4())


async def test_first_reservation_stores_record(store: IdempotencyStore) -> None:
    assert await store.reserve("acme", _key(), IdempotencyRecord("r1", "digest")) is None


async def test_second_reservation_returns_first(store: IdempotencyStore) -> None:
    key = _key()
    await store.reserve("acme", key, IdempotencyRecord("r1", "digest"))

    earlier = await store.reserve("acme", key, IdempotencyRecord("r2", "digest"))

    assert earlier == IdempotencyRecord("r1", "digest", accepted=False)


async def test_pending_reservation_expires_soon(store: IdempotencyStore, redis_client: redis.Redis) -> None:
    key = _key()

    await store.reserve("acme", key, IdempotencyRecord("r1", "digest"))

    ttl = await redis_client.ttl(idempotency_key("acme", key))
    assert 0 < ttl <= PENDING_RESERVATION_TTL_S


async def test_confirmed_key_lives_full_ttl(store: IdempotencyStore, redis_client: redis.Redis) -> None:
    key = _key()
    record = IdempotencyRecord("r1", "digest")
    await store.reserve("acme", key, record)

    await store.mark_accepted("acme", key, record)

    assert await store.reserve("acme", key, IdempotencyRecord("r2", "digest")) == IdempotencyRecord("r1", "digest", True)
    ttl = await redis_client.ttl(idempotency_key("acme", key))
    assert PENDING_RESERVATION_TTL_S < ttl <= TTL_S


async def test_released_key_can_be_reserved_again(store: IdempotencyStore) -> None:
    key = _key()
    await store.reserve("acme", key, IdempotencyRecord("r1", "digest"))

    await store.release("acme", key)

    assert await store.reserve("acme", key, IdempotencyRecord("r2", "digest")) is None


async def test_keys_are_scoped_to_tenant(store: IdempotencyStore) -> None:
    key = _key()
    await store.reserve("acme", key, IdempotencyRecord("r1", "digest"))

    assert await store.reserve("globex", key, IdempotencyRecord("r2", "digest")) is None

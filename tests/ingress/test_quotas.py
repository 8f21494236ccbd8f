"""Per-key quotas: the charge script against a real Redis, and 429 with Retry-After through the running ingress."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import httpx
import pytest
import redis
import redis.asyncio as redis_async

from shared.api_keys import ApiKeyRecord
from shared.events import ChatMessage, GenerationParams, RequestSpec

from services.ingress.errors import QuotaExceededError
from services.ingress.quotas import UNSET_MAX_NEW_TOKENS_CHARGE, QuotaLimiter, estimated_tokens, quota_key
from tests.ingress.support import ApiKeys, bearer
from tests.support.keys_cli import create_key

pytestmark = [pytest.mark.nats, pytest.mark.redis]

# 40 characters: charged as 10 prompt tokens.
PROMPT = "Speak of kings and of their long decline."[:40]


def new_record(**limits: int) -> ApiKeyRecord:
    key_id = uuid.uuid4().hex[:16]
    return ApiKeyRecord(key_id=key_id, tenant="quota", sha256="0" * 64, created_at=datetime.now(UTC), **limits)


def new_tenant() -> str:
    return f"quota-{uuid.uuid4().hex[:8]}"


def body(max_new_tokens: int) -> dict[str, object]:
    return {"prompt": PROMPT, "params": {"max_new_tokens": max_new_tokens}}


def test_estimate_adds_prompt_and_new_tokens() -> None:
    spec = RequestSpec(messages=[ChatMessage(role="user", content="x" * 41)], params=GenerationParams(max_new_tokens=50))

    assert estimated_tokens(spec, 41) == 11 + 50


def test_estimate_charges_default_when_unset() -> None:
    spec = RequestSpec(messages=[ChatMessage(role="user", content="x" * 8)])

    assert estimated_tokens(spec, 8) == 2 + UNSET_MAX_NEW_TOKENS_CHARGE


@pytest.fixture
def limiter(redis_client: redis_async.Redis) -> QuotaLimiter:
    return QuotaLimiter(redis_client)


async def test_unlimited_key_writes_nothing(limiter: QuotaLimiter, redis_client: redis_async.Redis) -> None:
    key = new_record()

    for _ in range(3):
        await limiter.charge(key, 1_000_000)

    assert await redis_client.exists(quota_key(key.key_id)) == 0


async def test_token_refusal_leaves_request_bucket(limiter: QuotaLimiter, redis_client: redis_async.Redis) -> None:
    key = new_record(requests_per_minute=10, tokens_per_minute=100)
    await limiter.charge(key, 60)
    before = await redis_client.hgetall(quota_key(key.key_id))

    with pytest.raises(QuotaExceededError) as raised:
        await limiter.charge(key, 60)

    assert raised.value.code == "rate_limit_exceeded"
    assert await redis_client.hgetall(quota_key(key.key_id)) == before
    assert float(before[b"requests"]) == 9.0
    assert float(before[b"tokens"]) == 40.0


async def test_request_larger_than_limit_has_no_retry_after(limiter: QuotaLimiter, redis_client: redis_async.Redis) -> None:
    key = new_record(tokens_per_minute=100)

    with pytest.raises(QuotaExceededError) as raised:
        await limiter.charge(key, 101)

    assert raised.value.code == "request_exceeds_token_limit"
    assert raised.value.retry_after_s is None
    assert raised.value.headers is None
    assert await redis_client.exists(quota_key(key.key_id)) == 0


async def test_quota_hash_expires_after_a_minute(limiter: QuotaLimiter, redis_client: redis_async.Redis) -> None:
    key = new_record(requests_per_minute=5)

    await limiter.charge(key, 1)

    assert 59_000 < await redis_client.pttl(quota_key(key.key_id)) <= 60_000


def test_token_quota_returns_429(ingress: str, ingress_nats_url: str, redis_url: str) -> None:
    tenant = new_tenant()
    key = create_key(ingress_nats_url, tenant, "--tokens-per-minute", "100")
    store = redis.Redis.from_url(redis_url)

    with httpx.Client(base_url=ingress, headers=bearer(key.plain_key), timeout=10.0) as http:
        first = http.post("/v1/requests", json=body(max_new_tokens=50))
        charged = store.hgetall(quota_key(key.key_id))
        second = http.post("/v1/requests", json=body(max_new_tokens=50))

    assert first.status_code == 202, first.text
    assert second.status_code == 429, second.text
    # 60 tokens wanted, 40 left, refilled at 100 per minute: 12 s, less the time between the requests.
    assert 11 <= int(second.headers["Retry-After"]) <= 12
    assert second.json()["error"]["code"] == "rate_limit_exceeded"
    assert store.hgetall(quota_key(key.key_id)) == charged
    assert len(list(store.scan_iter(match=f"sluice:request:{tenant}:*"))) == 1


def test_request_quota_returns_429(ingress: str, ingress_nats_url: str) -> None:
    key = create_key(ingress_nats_url, new_tenant(), "--requests-per-minute", "2", "--tokens-per-minute", "10000")

    with httpx.Client(base_url=ingress, headers=bearer(key.plain_key), timeout=10.0) as http:
        statuses = [http.post("/v1/requests", json=body(max_new_tokens=8)).status_code for _ in range(2)]
        refused = http.post("/v1/requests", json=body(max_new_tokens=8))

    assert statuses == [202, 202]
    assert refused.status_code == 429, refused.text
    # One request wanted, none left, refilled at 2 per minute: 30 s, less the time since the last charge.
    assert 29 <= int(refused.headers["Retry-After"]) <= 30
    # The message names the limit that was reached, not the token limit that still has room.
    assert "quota of 2 requests per minute;" in refused.json()["error"]["message"]


def test_request_over_token_limit_returns_429(ingress: str, ingress_nats_url: str) -> None:
    key = create_key(ingress_nats_url, new_tenant(), "--tokens-per-minute", "100")

    with httpx.Client(base_url=ingress, headers=bearer(key.plain_key), timeout=10.0) as http:
        response = http.post("/v1/requests", json=body(max_new_tokens=200))

    assert response.status_code == 429, response.text
    assert "Retry-After" not in response.headers
    assert response.json()["error"]["code"] == "request_exceeds_token_limit"


def test_other_tenant_unaffected_by_quota(ingress: str, ingress_nats_url: str, api_keys: ApiKeys) -> None:
    key = create_key(ingress_nats_url, new_tenant(), "--requests-per-minute", "1")

    with httpx.Client(base_url=ingress, timeout=10.0) as http:
        http.post("/v1/requests", json=body(max_new_tokens=8), headers=bearer(key.plain_key))
        refused = http.post("/v1/requests", json=body(max_new_tokens=8), headers=bearer(key.plain_key))
        other = http.post("/v1/requests", json=body(max_new_tokens=8), headers=bearer(api_keys.globex))

    assert refused.status_code == 429
    assert other.status_code == 202, other.text


async def test_openai_route_charges_quota(
    ingress: str, ingress_nats_url: str, limiter: QuotaLimiter, http: httpx.AsyncClient
) -> None:
    key = await asyncio.to_thread(create_key, ingress_nats_url, new_tenant(), "--requests-per-minute", "1")
    record = new_record(requests_per_minute=1).model_copy(update={"key_id": key.key_id})
    await limiter.charge(record, 1)
    chat = {"model": "auto", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8}

    response = await http.post("/v1/chat/completions", json=chat, headers=bearer(key.plain_key))

    assert response.status_code == 429, response.text
    assert 59 <= int(response.headers["Retry-After"]) <= 60
    assert response.json()["error"]["code"] == "rate_limit_exceeded"

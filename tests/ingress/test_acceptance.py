"""Accepting a request when NATS is down, and the helpers that check headers."""

from __future__ import annotations

import uuid

import httpx
import pytest
import redis.asyncio as redis

from services.ingress.acceptance import check_idempotency_key, trace_context
from services.ingress.errors import InvalidRequestError
from services.ingress.idempotency import idempotency_key
from tests.ingress.support import Outage, bearer

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.nats
@pytest.mark.redis
async def test_unpublished_request_returns_503(outage: Outage, outage_http: httpx.AsyncClient) -> None:
    response = await outage_http.post("/v1/requests", json={"prompt": "hello"}, headers=bearer(outage.key))

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "event_bus_unavailable"


@pytest.mark.nats
@pytest.mark.redis
async def test_unpublished_request_leaves_no_state(
    outage: Outage, outage_http: httpx.AsyncClient, redis_client: redis.Redis
) -> None:
    key = str(uuid.uuid4())
    headers = {**bearer(outage.key), "Idempotency-Key": key}

    response = await outage_http.post("/v1/requests", json={"prompt": "hello"}, headers=headers)

    assert response.status_code == 503
    assert await redis_client.exists(idempotency_key(outage.tenant, key)) == 0
    assert [key async for key in redis_client.scan_iter(match=f"sluice:request:{outage.tenant}:*")] == []


def test_valid_traceparent_is_kept() -> None:
    assert trace_context(TRACEPARENT, None) == {"traceparent": TRACEPARENT}


def test_tracestate_without_traceparent_dropped() -> None:
    context = trace_context(None, "vendor=1")

    assert "tracestate" not in context
    assert context["traceparent"].startswith("00-")


def test_uppercase_traceparent_replaced() -> None:
    context = trace_context(TRACEPARENT.upper(), None)

    assert context["traceparent"] != TRACEPARENT
    assert context["traceparent"] != TRACEPARENT.upper()


def test_long_idempotency_key_rejected() -> None:
    with pytest.raises(InvalidRequestError, match="1 to 255"):
        check_idempotency_key("k" * 256)


def test_uuid_idempotency_key_accepted() -> None:
    check_idempotency_key(str(uuid.uuid4()))

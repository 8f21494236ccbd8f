"""POST /v1/feedback against a running ingress, NATS, Redis and a store API on real chDB."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import redis.asyncio as redis
from nats.aio.client import Client as NatsClient

from services.ingress.feedback_attribution import (
    STORE_LAG_ALLOWANCE_S,
    STORE_RETRY_AFTER_S,
    RatedRequestNotFoundError,
)
from services.ingress.state_store import RecordField, RequestStateStore, RequestStatus, StateUpdate
from services.telemetry.store import EventStore
from shared.events import EventType, FeedbackPayload, utc_now
from shared.settings import Settings

from tests.ingress.feedback_store import feedback_rows, serving_feedback_store, store_accepted, store_published_feedback
from tests.ingress.support import ApiKeys, bearer, read_events

pytestmark = [pytest.mark.nats, pytest.mark.redis]


@pytest.fixture
async def store(ingress_nats_url: str, clickhouse_dsn: str, ingress: str) -> AsyncIterator[EventStore]:
    async with serving_feedback_store(ingress_nats_url, clickhouse_dsn) as event_store:
        yield event_store


@pytest.fixture
async def request_id(store: EventStore) -> str:
    """An acme request that telemetry stored a minute ago."""
    request_id = uuid.uuid4().hex
    await store_accepted(store, "acme", request_id, utc_now() - timedelta(minutes=1))
    return request_id


def _headers(key: str, idempotency_key: str | None = None) -> dict[str, str]:
    return {**bearer(key), "Idempotency-Key": idempotency_key or str(uuid.uuid4())}


def _not_found_body(request_id: str) -> dict[str, Any]:
    error = RatedRequestNotFoundError(request_id)
    return {"error": {"code": error.code, "message": error.message, "field": error.field}}


async def _published_for(nats_client: NatsClient, request_id: str) -> list:
    return [event for event in await read_events(nats_client, EventType.FEEDBACK) if event.request_id == request_id]


@pytest.mark.clickhouse
async def test_feedback_accepted_and_published(
    http: httpx.AsyncClient, api_keys: ApiKeys, nats_client: NatsClient, request_id: str
) -> None:
    body = {"request_id": request_id, "kind": "rating", "value": 4, "metadata": {"page": "docs"}}

    response = await http.post("/v1/feedback", json=body, headers=_headers(api_keys.acme, "rate-1"))

    assert response.status_code == 202
    assert response.json()["status"] == "accepted"
    [event] = await _published_for(nats_client, request_id)
    assert event.event_id == response.json()["feedback_id"]
    assert event.tenant == "acme"
    assert event.route == "/v1/feedback"
    payload = FeedbackPayload.model_validate(event.payload)
    assert payload.model_dump(mode="json") == {
        "kind": "rating", "value": 4.0, "metadata": {"page": "docs"}, "idempotency_key": "rate-1", "channel": "http"
    }


@pytest.mark.clickhouse
async def test_repeat_stored_once(
    http: httpx.AsyncClient, api_keys: ApiKeys, nats_client: NatsClient, store: EventStore, request_id: str
) -> None:
    body = {"request_id": request_id, "kind": "thumbs", "value": 1}
    headers = _headers(api_keys.acme)

    first = await http.post("/v1/feedback", json=body, headers=headers)
    second = await http.post("/v1/feedback", json=body, headers=headers)
    await store_published_feedback(store, nats_client)
    await store_published_feedback(store, nats_client)

    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json() == {"feedback_id": first.json()["feedback_id"], "status": "duplicate"}
    assert len(await _published_for(nats_client, request_id)) == 1
    [row] = await feedback_rows(store, request_id)
    assert row["event_id"] == first.json()["feedback_id"]
    assert row["tenant"] == "acme"
    assert row["kind"] == "thumbs"
    assert row["value"] == 1.0
    assert row["channel"] == "http"


@pytest.mark.clickhouse
async def test_metadata_stored_as_map(
    http: httpx.AsyncClient, api_keys: ApiKeys, nats_client: NatsClient, store: EventStore, request_id: str
) -> None:
    body = {"request_id": request_id, "kind": "value", "value": -12.5, "metadata": {"currency": "EUR", "sku": "a-1"}}

    response = await http.post("/v1/feedback", json=body, headers=_headers(api_keys.acme, "order-7"))
    await store_published_feedback(store, nats_client)

    assert response.status_code == 202
    [row] = await feedback_rows(store, request_id)
    assert row["metadata"] == {"currency": "EUR", "sku": "a-1"}
    assert row["value"] == -12.5
    assert row["idempotency_key"] == "order-7"


@pytest.mark.clickhouse
async def test_key_in_body_accepted(http: httpx.AsyncClient, api_keys: ApiKeys, request_id: str) -> None:
    body = {"request_id": request_id, "kind": "conversion", "value": 0, "idempotency_key": str(uuid.uuid4())}

    response = await http.post("/v1/feedback", json=body, headers=bearer(api_keys.acme))

    assert response.status_code == 202


@pytest.mark.clickhouse
async def test_reused_key_other_body_rejected(
    http: httpx.AsyncClient, api_keys: ApiKeys, nats_client: NatsClient, request_id: str
) -> None:
    headers = _headers(api_keys.acme)
    first = await http.post("/v1/feedback", json={"request_id": request_id, "kind": "thumbs", "value": 1}, headers=headers)

    response = await http.post("/v1/feedback", json={"request_id": request_id, "kind": "thumbs", "value": 0}, headers=headers)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "idempotency_key_reused"
    assert error["field"] == "idempotency_key"
    assert first.json()["feedback_id"] in error["message"]
    assert len(await _published_for(nats_client, request_id)) == 1


@pytest.mark.clickhouse
async def test_unknown_request_returns_404(http: httpx.AsyncClient, api_keys: ApiKeys, store: EventStore) -> None:
    unknown = uuid.uuid4().hex

    response = await http.post(
        "/v1/feedback", json={"request_id": unknown, "kind": "thumbs", "value": 1}, headers=_headers(api_keys.acme)
    )

    assert response.status_code == 404
    assert response.json() == _not_found_body(unknown)


@pytest.mark.clickhouse
async def test_other_tenants_request_reads_as_unknown(
    http: httpx.AsyncClient, api_keys: ApiKeys, nats_client: NatsClient, request_id: str
) -> None:
    response = await http.post(
        "/v1/feedback", json={"request_id": request_id, "kind": "thumbs", "value": 1}, headers=_headers(api_keys.globex)
    )

    assert response.status_code == 404
    assert response.json() == _not_found_body(request_id)
    assert await _published_for(nats_client, request_id) == []


@pytest.mark.clickhouse
async def test_request_beyond_window_returns_409(
    http: httpx.AsyncClient, api_keys: ApiKeys, nats_client: NatsClient, store: EventStore, settings: Settings
) -> None:
    old = uuid.uuid4().hex
    await store_accepted(store, "acme", old, utc_now() - timedelta(seconds=settings.feedback_attribution_window_s + 60))

    response = await http.post(
        "/v1/feedback", json={"request_id": old, "kind": "conversion", "value": 1}, headers=_headers(api_keys.acme)
    )

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "attribution_window_closed"
    assert f"{settings.feedback_attribution_window_s} s" in error["message"]
    assert await _published_for(nats_client, old) == []


@pytest.mark.clickhouse
async def test_request_inside_window_accepted(
    http: httpx.AsyncClient, api_keys: ApiKeys, store: EventStore, settings: Settings
) -> None:
    older = uuid.uuid4().hex
    await store_accepted(store, "acme", older, utc_now() - timedelta(seconds=settings.feedback_attribution_window_s - 60))

    response = await http.post(
        "/v1/feedback", json={"request_id": older, "kind": "conversion", "value": 1}, headers=_headers(api_keys.acme)
    )

    assert response.status_code == 202


@pytest.mark.clickhouse
async def test_just_accepted_request_found_in_redis(
    http: httpx.AsyncClient, api_keys: ApiKeys, nats_client: NatsClient, store: EventStore
) -> None:
    submitted = await http.post("/v1/requests", json={"prompt": "Speak of kings"}, headers=bearer(api_keys.acme))
    request_id = submitted.json()["request_id"]

    response = await http.post(
        "/v1/feedback", json={"request_id": request_id, "kind": "thumbs", "value": 0}, headers=_headers(api_keys.acme)
    )

    assert response.status_code == 202
    assert len(await _published_for(nats_client, request_id)) == 1


@pytest.mark.clickhouse
async def test_redis_fallback_is_per_tenant(http: httpx.AsyncClient, api_keys: ApiKeys, store: EventStore) -> None:
    submitted = await http.post("/v1/requests", json={"prompt": "Speak of kings"}, headers=bearer(api_keys.globex))
    request_id = submitted.json()["request_id"]

    response = await http.post(
        "/v1/feedback", json={"request_id": request_id, "kind": "thumbs", "value": 1}, headers=_headers(api_keys.acme)
    )

    assert response.status_code == 404
    assert response.json() == _not_found_body(request_id)


@pytest.mark.clickhouse
async def test_redis_fallback_not_for_older_request(
    http: httpx.AsyncClient, api_keys: ApiKeys, redis_client: redis.Redis, store: EventStore, settings: Settings
) -> None:
    request_id = uuid.uuid4().hex
    accepted_at = utc_now() - timedelta(seconds=STORE_LAG_ALLOWANCE_S + 60)
    update = StateUpdate(RequestStatus.COMPLETED, {RecordField.ACCEPTED_AT: accepted_at.isoformat()})
    await RequestStateStore(redis_client, settings.request_state_ttl_s).apply("acme", request_id, update)

    response = await http.post(
        "/v1/feedback", json={"request_id": request_id, "kind": "thumbs", "value": 1}, headers=_headers(api_keys.acme)
    )

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "store_unavailable"
    assert response.headers["Retry-After"] == str(STORE_RETRY_AFTER_S)


async def test_store_unavailable_returns_503(http: httpx.AsyncClient, api_keys: ApiKeys, nats_client: NatsClient) -> None:
    request_id = uuid.uuid4().hex

    response = await http.post(
        "/v1/feedback", json={"request_id": request_id, "kind": "thumbs", "value": 1}, headers=_headers(api_keys.acme)
    )

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "store_unavailable"
    assert response.headers["Retry-After"] == str(STORE_RETRY_AFTER_S)
    assert await _published_for(nats_client, request_id) == []


async def test_key_free_after_503(http: httpx.AsyncClient, api_keys: ApiKeys, redis_client: redis.Redis) -> None:
    key = str(uuid.uuid4())
    body = {"request_id": uuid.uuid4().hex, "kind": "thumbs", "value": 1}

    await http.post("/v1/feedback", json=body, headers=_headers(api_keys.acme, key))

    assert await redis_client.exists(f"sluice:feedback-idempotency:acme:{key}") == 0


async def test_feedback_needs_api_key(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/feedback", json={"request_id": "r1", "kind": "thumbs", "value": 1})

    assert response.status_code == 401


async def test_missing_key_names_header_and_field(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    response = await http.post(
        "/v1/feedback", json={"request_id": "r1", "kind": "thumbs", "value": 1}, headers=bearer(api_keys.acme)
    )

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "missing_idempotency_key"
    assert error["field"] == "idempotency_key"
    assert "Idempotency-Key" in error["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "thumbs", "value": 1}, "request_id"),
        ({"request_id": "r1", "kind": "stars", "value": 1}, "kind"),
        ({"request_id": "r1", "kind": "rating", "value": 6}, "value"),
        ({"request_id": "r1", "kind": "rating", "value": 0.5}, "value"),
        ({"request_id": "r1", "kind": "thumbs", "value": 2}, "value"),
        ({"request_id": "r1", "kind": "thumbs", "value": True}, "value"),
        ({"request_id": "r1", "kind": "conversion", "value": 0.5}, "value"),
        ({"request_id": "r1", "kind": "value", "value": "12"}, "value"),
        ({"request_id": "r1", "kind": "value"}, "value"),
        ({"request_id": "r1", "kind": "thumbs", "value": 1, "metadata": {"k": 1}}, "metadata.k"),
        ({"request_id": "r1", "kind": "thumbs", "value": 1, "metadata": {"k": "v" * 513}}, "metadata"),
        ({"request_id": "r1", "kind": "thumbs", "value": 1, "metadata": {f"k{i}": "v" for i in range(33)}}, "metadata"),
        ({"request_id": "r1", "kind": "thumbs", "value": 1, "idempotency_key": "has space"}, "idempotency_key"),
        ({"request_id": "r1", "kind": "thumbs", "value": 1, "comment": "great"}, "comment"),
    ],
)
async def test_invalid_body_names_field(
    http: httpx.AsyncClient, api_keys: ApiKeys, nats_client: NatsClient, body: dict[str, Any], field: str
) -> None:
    request_id = uuid.uuid4().hex
    body = {**body, "request_id": request_id} if "request_id" in body else body

    response = await http.post("/v1/feedback", json=body, headers=_headers(api_keys.acme))

    assert response.status_code == 422
    assert response.json()["error"]["field"] == field
    assert await _published_for(nats_client, request_id) == []


async def test_non_finite_value_rejected(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    # JSON has no NaN, but Python's json module writes and reads it.
    content = b'{"request_id": "r1", "kind": "value", "value": NaN}'
    headers = {**_headers(api_keys.acme), "Content-Type": "application/json"}

    response = await http.post("/v1/feedback", content=content, headers=headers)

    assert response.status_code == 422
    assert response.json()["error"]["field"] == "value"


async def test_conflicting_keys_rejected(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    body = {"request_id": "r1", "kind": "thumbs", "value": 1, "idempotency_key": "k-body"}

    response = await http.post("/v1/feedback", json=body, headers=_headers(api_keys.acme, "k-header"))

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "conflicting_idempotency_key"

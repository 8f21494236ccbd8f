"""POST /v1/requests and GET /v1/requests/{id} against a running ingress, NATS and Redis."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
import pytest
import redis.asyncio as redis
from nats.aio.client import Client as NatsClient

from shared.events import AcceptedPayload, EventType
from shared.settings import Settings

from services.ingress.acceptance import body_digest
from services.ingress.idempotency import IdempotencyRecord, IdempotencyStore
from services.ingress.models import CreateRequestBody
from tests.ingress.support import ApiKeys, bearer, read_events

pytestmark = [pytest.mark.nats, pytest.mark.redis]

PROMPT_BODY = {"prompt": "Tell me about the sea."}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def _accepted_events(nats_client: NatsClient, request_id: str) -> list:
    return [event for event in await read_events(nats_client, EventType.ACCEPTED) if event.request_id == request_id]


async def test_post_without_key_returns_401(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/requests", json=PROMPT_BODY)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert "Authorization" in response.json()["error"]["message"]
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_post_with_wrong_key_returns_401(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/requests", json=PROMPT_BODY, headers=bearer("sk-sluice-not-a-key"))

    assert response.status_code == 401
    assert "invalid API key" in response.json()["error"]["message"]


async def test_post_with_basic_scheme_returns_401(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    response = await http.post("/v1/requests", json=PROMPT_BODY, headers={"Authorization": f"Basic {api_keys.acme}"})

    assert response.status_code == 401
    assert "malformed Authorization header" in response.json()["error"]["message"]


async def test_auth_checked_before_body(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/requests", json={"params": {"temperature": 5}})

    assert response.status_code == 401


async def test_invalid_temperature_names_field(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    body = {"prompt": "hi", "params": {"temperature": 5}}

    response = await http.post("/v1/requests", json=body, headers=bearer(api_keys.acme))

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["field"] == "params.temperature"
    assert error["details"][0]["field"] == "params.temperature"
    assert "less than or equal to 2" in error["details"][0]["message"]


async def test_missing_messages_names_both_fields(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    response = await http.post("/v1/requests", json={"params": {}}, headers=bearer(api_keys.acme))

    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert "'messages'" in message
    assert "'prompt'" in message


async def test_prompt_and_messages_together_rejected(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    body = {"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}

    response = await http.post("/v1/requests", json=body, headers=bearer(api_keys.acme))

    assert response.status_code == 422
    assert "not both" in response.json()["error"]["message"]


async def test_invalid_role_names_message_path(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]}

    response = await http.post("/v1/requests", json=body, headers=bearer(api_keys.acme))

    assert response.status_code == 422
    assert response.json()["error"]["field"] == "messages.1.role"


async def test_malformed_json_returns_422(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    headers = {**bearer(api_keys.acme), "Content-Type": "application/json"}

    response = await http.post("/v1/requests", content=b"{not json", headers=headers)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


async def test_oversized_prompt_returns_413(http: httpx.AsyncClient, api_keys: ApiKeys, settings: Settings) -> None:
    size = settings.max_prompt_chars + 1
    body = {"messages": [{"role": "system", "content": "x" * (size - 10)}, {"role": "user", "content": "y" * 10}]}

    response = await http.post("/v1/requests", json=body, headers=bearer(api_keys.acme))

    assert response.status_code == 413
    message = response.json()["error"]["message"]
    assert str(size) in message
    assert str(settings.max_prompt_chars) in message


async def test_accepted_request_publishes_one_event(
    http: httpx.AsyncClient, api_keys: ApiKeys, nats_client: NatsClient, settings: Settings
) -> None:
    response = await http.post("/v1/requests", json=PROMPT_BODY, headers=bearer(api_keys.acme))

    assert response.status_code == 202
    request_id = response.json()["request_id"]
    events = await _accepted_events(nats_client, request_id)
    assert len(events) == 1
    event = events[0]
    assert event.tenant == "acme"
    assert event.deadline - event.ts == pytest.approx(timedelta(seconds=settings.request_timeout_s), abs=timedelta(seconds=1))
    payload = AcceptedPayload.model_validate(event.payload)
    assert [message.model_dump() for message in payload.request.messages] == [
        {"role": "user", "content": PROMPT_BODY["prompt"]}
    ]
    assert payload.prompt_chars == len(PROMPT_BODY["prompt"])


async def test_accepted_response_has_absolute_urls(http: httpx.AsyncClient, api_keys: ApiKeys, ingress: str) -> None:
    response = await http.post("/v1/requests", json=PROMPT_BODY, headers=bearer(api_keys.acme))

    body = response.json()
    request_id = body["request_id"]
    assert body["status_url"] == f"{ingress}/v1/requests/{request_id}"
    assert body["stream_url"] == f"{ingress.replace('http://', 'ws://')}/v1/requests/{request_id}/stream"


async def test_traceparent_travels_in_envelope(http: httpx.AsyncClient, api_keys: ApiKeys, nats_client: NatsClient) -> None:
    headers = {**bearer(api_keys.acme), "traceparent": TRACEPARENT, "tracestate": "vendor=1"}

    response = await http.post("/v1/requests", json=PROMPT_BODY, headers=headers)

    [event] = await _accepted_events(nats_client, response.json()["request_id"])
    _, trace_id, parent_id, _ = TRACEPARENT.split("-")
    assert event.trace["trace_id"] == trace_id
    assert event.trace["parent_span_id"] == parent_id
    assert event.trace["traceparent"] == f"00-{trace_id}-{event.trace['span_id']}-01"
    assert event.trace["tracestate"] == "vendor=1"


async def test_malformed_traceparent_starts_trace(http: httpx.AsyncClient, api_keys: ApiKeys, nats_client: NatsClient) -> None:
    headers = {**bearer(api_keys.acme), "traceparent": "not-a-trace"}

    response = await http.post("/v1/requests", json=PROMPT_BODY, headers=headers)

    assert response.status_code == 202
    [event] = await _accepted_events(nats_client, response.json()["request_id"])
    assert len(event.trace["trace_id"]) == 32
    assert len(event.trace["parent_span_id"]) == 16
    assert event.trace["traceparent"] != "not-a-trace"


async def test_accepted_request_reads_as_screening(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    created = await http.post("/v1/requests", json=PROMPT_BODY, headers=bearer(api_keys.acme))
    request_id = created.json()["request_id"]

    response = await http.get(f"/v1/requests/{request_id}", headers=bearer(api_keys.acme))

    assert response.status_code == 200
    body = response.json()
    assert body["request_id"] == request_id
    assert body["status"] == "screening"
    assert body["timings"]["accepted_at"] is not None
    assert body["text"] is None


async def test_idempotency_repeat_returns_same_request(
    http: httpx.AsyncClient, api_keys: ApiKeys, nats_client: NatsClient
) -> None:
    headers = {**bearer(api_keys.acme), "Idempotency-Key": str(uuid.uuid4())}

    first = await http.post("/v1/requests", json=PROMPT_BODY, headers=headers)
    second = await http.post("/v1/requests", json=PROMPT_BODY, headers=headers)

    assert first.status_code == 202
    assert second.status_code == 202
    assert second.json() == first.json()
    keyed = [
        event
        for event in await read_events(nats_client, EventType.ACCEPTED)
        if event.payload.get("idempotency_key") == headers["Idempotency-Key"]
    ]
    assert len(keyed) == 1


async def test_idempotency_key_with_other_body_rejected(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    headers = {**bearer(api_keys.acme), "Idempotency-Key": str(uuid.uuid4())}
    first = await http.post("/v1/requests", json=PROMPT_BODY, headers=headers)

    response = await http.post("/v1/requests", json={"prompt": "Something else."}, headers=headers)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "idempotency_key_reused"
    assert error["field"] == "Idempotency-Key"
    assert first.json()["request_id"] in error["message"]


async def test_idempotency_keys_are_per_tenant(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    key = str(uuid.uuid4())

    acme = await http.post("/v1/requests", json=PROMPT_BODY, headers={**bearer(api_keys.acme), "Idempotency-Key": key})
    globex = await http.post("/v1/requests", json=PROMPT_BODY, headers={**bearer(api_keys.globex), "Idempotency-Key": key})

    assert globex.status_code == 202
    assert globex.json()["request_id"] != acme.json()["request_id"]


async def test_idempotency_key_with_space_rejected(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    headers = {**bearer(api_keys.acme), "Idempotency-Key": "two words"}

    response = await http.post("/v1/requests", json=PROMPT_BODY, headers=headers)

    assert response.status_code == 422
    assert response.json()["error"]["field"] == "Idempotency-Key"


async def test_unknown_request_returns_404(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    response = await http.get(f"/v1/requests/{uuid.uuid4().hex}", headers=bearer(api_keys.acme))

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "request_not_found"


async def test_other_tenants_request_returns_404(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    created = await http.post("/v1/requests", json=PROMPT_BODY, headers=bearer(api_keys.acme))

    response = await http.get(f"/v1/requests/{created.json()['request_id']}", headers=bearer(api_keys.globex))

    assert response.status_code == 404


async def test_get_without_key_returns_401(http: httpx.AsyncClient) -> None:
    response = await http.get(f"/v1/requests/{uuid.uuid4().hex}")

    assert response.status_code == 401


async def test_unknown_path_returns_json_404(http: httpx.AsyncClient) -> None:
    response = await http.get("/v2/nothing")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_wrong_method_returns_json_405(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    response = await http.delete("/v1/requests", headers=bearer(api_keys.acme))

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


async def test_pending_idempotency_key_returns_409(
    http: httpx.AsyncClient, api_keys: ApiKeys, redis_client: redis.Redis, settings: Settings
) -> None:
    # A reservation that is not yet confirmed is what a concurrent first request leaves while it publishes.
    key = str(uuid.uuid4())
    digest = body_digest(CreateRequestBody.model_validate(PROMPT_BODY).to_spec())
    await IdempotencyStore(redis_client, settings.idempotency_ttl_s).reserve("acme", key, IdempotencyRecord("r1", digest))

    response = await http.post("/v1/requests", json=PROMPT_BODY, headers={**bearer(api_keys.acme), "Idempotency-Key": key})

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_key_in_use"

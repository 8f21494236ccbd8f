"""Feedback over the NATS subject `sluice.feedback.submit`, handled by a running ingress."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NatsClient

from services.telemetry.store import EventStore
from shared.events import EventType, utc_now
from shared.subjects import FEEDBACK_SUBMIT_SUBJECT

from tests.ingress.feedback_store import feedback_rows, serving_feedback_store, store_accepted, store_published_feedback
from tests.ingress.support import ApiKeys, bearer, read_events

pytestmark = [pytest.mark.nats, pytest.mark.redis]

# The ingress replies after one store lookup and one publish, well under this.
REPLY_TIMEOUT_S = 10.0


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


async def _submit(nats_client: NatsClient, message: dict[str, Any]) -> dict[str, Any]:
    reply = await nats_client.request(FEEDBACK_SUBMIT_SUBJECT, json.dumps(message).encode(), timeout=REPLY_TIMEOUT_S)
    return json.loads(reply.data)


def _message(request_id: str, **fields: Any) -> dict[str, Any]:
    return {"tenant": "acme", "request_id": request_id, "kind": "thumbs", "value": 1, "idempotency_key": str(uuid.uuid4()), **fields}


@pytest.mark.clickhouse
async def test_subject_records_feedback(nats_client: NatsClient, store: EventStore, request_id: str) -> None:
    reply = await _submit(nats_client, _message(request_id, kind="rating", value=5, metadata={"source": "crm"}))
    await store_published_feedback(store, nats_client)

    assert reply["status"] == "accepted"
    [row] = await feedback_rows(store, request_id)
    assert row["event_id"] == reply["feedback_id"]
    assert row["channel"] == "nats"
    assert row["kind"] == "rating"
    assert row["value"] == 5.0
    assert row["metadata"] == {"source": "crm"}


@pytest.mark.clickhouse
async def test_subject_repeat_is_duplicate(nats_client: NatsClient, request_id: str) -> None:
    message = _message(request_id)

    first = await _submit(nats_client, message)
    second = await _submit(nats_client, message)

    assert second == {"feedback_id": first["feedback_id"], "status": "duplicate"}
    published = [event for event in await read_events(nats_client, EventType.FEEDBACK) if event.request_id == request_id]
    assert len(published) == 1


@pytest.mark.clickhouse
async def test_subject_repeats_http_feedback(
    http: httpx.AsyncClient, api_keys: ApiKeys, nats_client: NatsClient, request_id: str
) -> None:
    # The same tenant, request, key and body name the same feedback, whichever channel carried it.
    body = {"request_id": request_id, "kind": "thumbs", "value": 1, "idempotency_key": "shared-key"}
    posted = await http.post("/v1/feedback", json=body, headers=bearer(api_keys.acme))

    reply = await _submit(nats_client, {**body, "tenant": "acme"})

    assert reply == {"feedback_id": posted.json()["feedback_id"], "status": "duplicate"}


@pytest.mark.clickhouse
async def test_subject_unknown_request(nats_client: NatsClient, store: EventStore) -> None:
    reply = await _submit(nats_client, _message(uuid.uuid4().hex))

    assert reply["error"]["code"] == "request_not_found"
    assert reply["error"]["field"] == "request_id"


@pytest.mark.clickhouse
async def test_subject_other_tenant_is_unknown(nats_client: NatsClient, request_id: str) -> None:
    reply = await _submit(nats_client, _message(request_id, tenant="globex"))

    assert reply["error"]["code"] == "request_not_found"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"value": 3}, "value"),
        ({"kind": "stars"}, "kind"),
        ({"tenant": "Not A Tenant"}, "tenant"),
        ({"idempotency_key": None}, "idempotency_key"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
    ],
)
async def test_subject_invalid_message_names_field(nats_client: NatsClient, fields: dict[str, Any], field: str) -> None:
    request_id = uuid.uuid4().hex

    reply = await _submit(nats_client, _message(request_id, **fields))

    assert reply["error"]["code"] == "invalid_request"
    assert reply["error"]["field"] == field
    published = [event for event in await read_events(nats_client, EventType.FEEDBACK) if event.request_id == request_id]
    assert published == []


async def test_subject_missing_tenant(nats_client: NatsClient) -> None:
    message = _message(uuid.uuid4().hex)
    del message["tenant"]

    reply = await _submit(nats_client, message)

    assert reply["error"]["field"] == "tenant"


async def test_subject_rejects_non_json(nats_client: NatsClient) -> None:
    reply = await nats_client.request(FEEDBACK_SUBMIT_SUBJECT, b"thumbs up", timeout=REPLY_TIMEOUT_S)

    assert json.loads(reply.data)["error"]["code"] == "invalid_request"

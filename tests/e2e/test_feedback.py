"""Feedback through the whole embedded stack: HTTP and the NATS subject, telemetry, the `feedback` table and the report."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import nats
import pytest

from services.cli.client import SluiceClient
from shared.store_client import StoreClient
from shared.subjects import FEEDBACK_SUBMIT_SUBJECT

pytestmark = pytest.mark.stack

# Telemetry stores a batch about a second after its events; the limit only stops a broken stack from hanging the test.
WAIT_S = 60.0
REPLY_TIMEOUT_S = 10.0
TENANT = "dev"


async def _completed_request(client: SluiceClient) -> str:
    submission = await client.submit({"prompt": "Speak of the sea", "params": {"max_new_tokens": 8}})
    async for _message in client.stream(submission.stream_url):
        pass
    return submission.request_id


async def _feedback_rows(store: StoreClient, request_id: str, expected: int) -> list[list[Any]]:
    """Return the request's rows of `feedback FINAL` once there are `expected` of them, or what is there after WAIT_S."""
    sql = (
        "SELECT kind, value, channel, event_id FROM feedback FINAL "
        "WHERE tenant = {tenant:String} AND request_id = {id:String} ORDER BY kind"
    )
    deadline = time.monotonic() + WAIT_S
    while True:
        rows = await store.query_all(sql, {"tenant": TENANT, "id": request_id})
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.5)


async def test_feedback_stored_once_per_key(client: SluiceClient, nats_connection: nats.NATS) -> None:
    request_id = await _completed_request(client)
    thumbs = {"request_id": request_id, "kind": "thumbs", "value": 1}
    key = str(uuid.uuid4())

    first = await client.feedback(thumbs, key)
    repeated = await client.feedback(thumbs, key)
    message = {"tenant": TENANT, "request_id": request_id, "kind": "rating", "value": 5, "idempotency_key": str(uuid.uuid4())}
    reply = await nats_connection.request(FEEDBACK_SUBMIT_SUBJECT, json.dumps(message).encode(), timeout=REPLY_TIMEOUT_S)
    rows = await _feedback_rows(StoreClient(nats_connection), request_id, expected=2)

    assert first["status"] == "accepted"
    assert repeated == {"feedback_id": first["feedback_id"], "status": "duplicate"}
    assert json.loads(reply.data)["status"] == "accepted"
    assert rows == [
        ["rating", 5.0, "nats", json.loads(reply.data)["feedback_id"]],
        ["thumbs", 1.0, "http", first["feedback_id"]],
    ]


async def test_feedback_report_names_variant(client: SluiceClient) -> None:
    request_id = await _completed_request(client)
    status = await client.status(request_id)

    await client.feedback({"request_id": request_id, "kind": "conversion", "value": 1}, str(uuid.uuid4()))
    deadline = time.monotonic() + WAIT_S
    while True:
        report = await client.analytics_report("feedback", {"bucket": "1d"})
        rows = [row for row in report["rows"] if row["conversions"] > 0]
        if rows or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)

    assert [row["variant"] for row in rows] == [status["variant"]["variant_key"]]

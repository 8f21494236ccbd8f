"""A prompt with an email address reaches the model redacted, and ClickHouse stores it redacted (shipped policy)."""

from __future__ import annotations

import asyncio
import json

import nats
from nats.aio.msg import Msg

from services.cli.client import SluiceClient
from shared.events import Envelope, EventType
from shared.store_client import StoreClient
from shared.subjects import event_subject
from tests.e2e.test_pipeline import EXPOSED_COMPLETED_EVENTS, run_prompt, stored_event_counts

EMAIL = "jane.doe@example.com"
PROMPT = f"Write two lines to {EMAIL} about the harvest feast"
SCREENED_WAIT_S = 30.0


async def test_email_reaches_model_redacted(client: SluiceClient, nats_connection: nats.NATS) -> None:
    screened: list[Envelope] = []

    async def collect(msg: Msg) -> None:
        screened.append(Envelope.model_validate_json(msg.data))

    subscription = await nats_connection.subscribe(event_subject(EventType.SCREENED), cb=collect)
    try:
        run = await run_prompt(client, {"prompt": PROMPT, "params": {"max_new_tokens": 8}})
        ours = await _wait_for(screened, run.request_id)
    finally:
        await subscription.unsubscribe()

    assert run.status["status"] == "completed", run.status
    content = ours.parsed_payload().request.messages[0].content
    assert EMAIL not in content
    assert content == "Write two lines to [EMAIL] about the harvest feast"


async def test_email_stored_redacted(client: SluiceClient, nats_connection: nats.NATS) -> None:
    store = StoreClient(nats_connection)
    run = await run_prompt(client, {"prompt": PROMPT, "params": {"max_new_tokens": 8}})

    await stored_event_counts(store, "dev", [run.request_id], set(EXPOSED_COMPLETED_EVENTS))
    sql = "SELECT type, payload FROM events FINAL WHERE tenant = {tenant:String} AND request_id = {id:String}"
    rows = await store.query_all(sql, {"tenant": "dev", "id": run.request_id})

    payloads = {event_type: payload for event_type, payload in rows}
    assert set(payloads) == set(EXPOSED_COMPLETED_EVENTS)
    for event_type, payload in payloads.items():
        assert EMAIL not in payload, event_type
    stored_prompt = json.loads(payloads["request.accepted"])["request"]["messages"][0]["content"]
    assert stored_prompt == "Write two lines to [EMAIL] about the harvest feast"


async def _wait_for(screened: list[Envelope], request_id: str) -> Envelope:
    for _ in range(int(SCREENED_WAIT_S / 0.1)):
        found = [envelope for envelope in screened if envelope.request_id == request_id]
        if found:
            return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no request.screened event for {request_id} within {SCREENED_WAIT_S} s")

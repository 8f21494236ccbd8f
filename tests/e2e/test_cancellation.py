"""Cancelling through the whole embedded stack: DELETE stops the model, a dropped WebSocket cancels nothing.

The model server's `/metrics` counters show how many tokens it generated
after the cancel; ClickHouse shows the accounting of the cancelled stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.cli.client import ApiError, SluiceClient
from shared.embedded.stack import EmbeddedStack
from shared.store_client import StoreClient

pytestmark = pytest.mark.stack

# Long enough that generation is still running when the test cancels it:
# the embedded model writes a few hundred tokens per second.
LONG_MAX_NEW_TOKENS = 900
# Tokens the model may still generate after the cancel: the one in progress
# when the connection closes, plus the notice's trip over NATS and HTTP.
MAX_TOKENS_AFTER_CANCEL = 5
# How long to watch the counters after the cancel, for generation that goes on.
SETTLE_S = 1.0
WAIT_S = 60.0
PROMPT = "Tell me the whole story of the kings of England, act by act."


async def model_server_counters(stack: EmbeddedStack) -> dict[str, float]:
    """Return the model server's generation counters, for example {"generated_tokens": 812.0, "stopped": 1.0}."""
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{stack.settings.resolved_model_server_url}/metrics")
    response.raise_for_status()
    counters: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "sluice_model_server_generated_tokens_total":
                counters["generated_tokens"] = sample.value
            elif sample.name == "sluice_model_server_generations_total":
                counters[sample.labels["outcome"]] = sample.value
    return counters


async def submit_long(client: SluiceClient) -> Any:
    body = {"prompt": PROMPT, "params": {"max_new_tokens": LONG_MAX_NEW_TOKENS, "temperature": 1.0}}
    return await client.submit(body)


async def first_chunk(messages: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    message = await anext(messages)
    assert message["type"] == "chunk", f"the stream ended before its first chunk: {message}"
    return message


async def wait_for_status(client: SluiceClient, request_id: str, expected: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while True:
        status = await client.status(request_id)
        if status["status"] == expected or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.1)


async def stored_payload(
    store: StoreClient, request_id: str, event_type: str, wait_s: float = WAIT_S
) -> dict[str, Any] | None:
    """Return the payload of the request's event of `event_type` in ClickHouse, or None when none arrived within `wait_s`."""
    sql = (
        "SELECT payload FROM events FINAL "
        "WHERE tenant = 'dev' AND request_id = {id:String} AND type = {type:String}"
    )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        rows = await store.query_all(sql, {"id": request_id, "type": event_type})
        if rows:
            return json.loads(rows[0][0])
        await asyncio.sleep(0.5)
    return None


@pytest.fixture
async def store(nats_connection) -> StoreClient:
    return StoreClient(nats_connection)


@pytest.fixture(scope="module")
async def cancelled_run(stack: EmbeddedStack) -> dict[str, Any]:
    """Cancel one long generation after its first chunk; return what the client and the model server saw."""
    async with SluiceClient(stack.http_url, stack.api_key) as client:
        submission = await submit_long(client)
        messages = client.stream(submission.stream_url)
        await first_chunk(messages)
        before = await model_server_counters(stack)
        response = await client.cancel(submission.request_id)
        rest = [message async for message in messages]
        await asyncio.sleep(SETTLE_S)
        after = await model_server_counters(stack)
        status = await wait_for_status(client, submission.request_id, "cancelled")
    return {
        "request_id": submission.request_id,
        "response": response,
        "final": rest[-1],
        "before": before,
        "after": after,
        "status": status,
    }


async def test_delete_returns_202_and_status(cancelled_run: dict[str, Any]) -> None:
    response = cancelled_run["response"]
    assert response["request_id"] == cancelled_run["request_id"]
    assert response["status"] in {"queued", "generating"}
    assert response["status_url"].endswith(f"/v1/requests/{cancelled_run['request_id']}")


async def test_delete_ends_stream_cancelled(cancelled_run: dict[str, Any]) -> None:
    assert cancelled_run["final"]["type"] == "final"
    assert cancelled_run["final"]["status"] == "cancelled"
    assert cancelled_run["final"]["reason"] == "client_request"
    assert cancelled_run["status"]["status"] == "cancelled"


async def test_delete_stops_model_server_generation(cancelled_run: dict[str, Any]) -> None:
    before, after = cancelled_run["before"], cancelled_run["after"]
    generated_after_cancel = after["generated_tokens"] - before["generated_tokens"]
    assert generated_after_cancel <= MAX_TOKENS_AFTER_CANCEL
    assert after["stopped"] == before.get("stopped", 0) + 1


async def test_cancelled_stream_accounting_stored(cancelled_run: dict[str, Any], store: StoreClient) -> None:
    payload = await stored_payload(store, cancelled_run["request_id"], "request.cancelled")
    assert payload is not None, "request.cancelled never reached ClickHouse"
    assert payload["reason"] == "client_request"
    stats = payload["stats"]
    assert stats["finish_reason"] == "cancelled"
    assert stats["backend"] == "embedded"
    assert 1 <= stats["completion_tokens"] < LONG_MAX_NEW_TOKENS
    assert stats["ttft_ms"] > 0
    assert stats["queue_ms"] >= 0


async def test_completed_request_accounting_stored(client: SluiceClient, store: StoreClient) -> None:
    submission = await client.submit({"prompt": PROMPT, "params": {"max_new_tokens": 16}})
    final = [message async for message in client.stream(submission.stream_url)][-1]
    assert final["status"] == "completed"

    payload = await stored_payload(store, submission.request_id, "generation.completed")
    assert payload is not None
    stats = payload["stats"]
    assert stats["completion_tokens"] == payload["usage"]["completion_tokens"]
    assert stats["prompt_tokens"] == payload["usage"]["prompt_tokens"] > 0
    assert stats["finish_reason"] == payload["finish_reason"]
    if stats["completion_tokens"] > 2:
        assert 0 < stats["inter_token"]["p50_ms"] <= stats["inter_token"]["p99_ms"] <= stats["inter_token"]["max_ms"]


async def test_delete_ended_request_409(client: SluiceClient) -> None:
    submission = await client.submit({"prompt": PROMPT, "params": {"max_new_tokens": 4}})
    [message async for message in client.stream(submission.stream_url)]
    await wait_for_status(client, submission.request_id, "completed")

    with pytest.raises(ApiError) as raised:
        await client.cancel(submission.request_id)
    assert raised.value.status_code == 409
    assert "already ended with status 'completed'" in str(raised.value)


async def test_delete_unknown_request_404(client: SluiceClient) -> None:
    with pytest.raises(ApiError) as raised:
        await client.cancel("0" * 32)
    assert raised.value.status_code == 404


async def test_websocket_drop_cancels_nothing(
    client: SluiceClient, stack: EmbeddedStack
) -> None:
    submission = await client.submit({"prompt": PROMPT, "params": {"max_new_tokens": 200}})
    messages = client.stream(submission.stream_url)
    first = await first_chunk(messages)
    await messages.aclose()

    resumed = [message async for message in client.stream(submission.stream_url, offset=first["seq"] + 1)]
    status = await wait_for_status(client, submission.request_id, "completed")

    assert resumed[-1]["status"] == "completed"
    assert status["status"] == "completed"
    text = first["text"] + "".join(message["text"] for message in resumed if message["type"] == "chunk")
    assert text == status["text"]


async def test_sse_client_disconnect_stops_generation(client: SluiceClient, stack: EmbeddedStack) -> None:
    sluice = openai.AsyncOpenAI(base_url=f"{stack.http_url}/v1", api_key=stack.api_key)
    stream = await sluice.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=LONG_MAX_NEW_TOKENS,
        temperature=1.0,
        stream=True,
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    request_id = chunk.id.removeprefix("chatcmpl-")
    before = await model_server_counters(stack)
    await stream.close()
    await sluice.close()

    status = await wait_for_status(client, request_id, "cancelled")
    await asyncio.sleep(SETTLE_S)
    after = await model_server_counters(stack)

    assert status["status"] == "cancelled"
    assert "client_disconnected" in status["error"]["message"]
    assert after["stopped"] == before.get("stopped", 0) + 1
    # The disconnect travels from the HTTP server to the cancel notice, so allow
    # the tokens of that trip on top of the direct cancel's bound.
    assert after["generated_tokens"] - before["generated_tokens"] <= 2 * MAX_TOKENS_AFTER_CANCEL



async def test_queued_request_cancels_at_once(client: SluiceClient, store: StoreClient) -> None:
    # The embedded pool generates 4 requests at once, so a fifth waits in its queue.
    running = [await submit_long(client) for _ in range(4)]
    for submission in running:
        await wait_for_status(client, submission.request_id, "generating")
    queued = await submit_long(client)
    await wait_for_queue_position(client, queued.request_id)

    response = await client.cancel(queued.request_id)
    final = [message async for message in client.stream(queued.stream_url)][-1]
    status = await client.status(queued.request_id)
    for submission in running:
        await client.cancel(submission.request_id)

    assert response["status"] == "queued"
    assert final["status"] == "cancelled"
    assert status["status"] == "cancelled"
    assert status["queue_position"] is None
    payload = await stored_payload(store, queued.request_id, "request.cancelled")
    assert payload is not None
    assert payload["stage"] == "ingress"
    assert payload["stats"] is None
    assert await stored_payload(store, queued.request_id, "generation.first_token", wait_s=2.0) is None
    trace_ids = await store.query_all(
        "SELECT DISTINCT trace['trace_id'] FROM events WHERE request_id = {request_id:String}",
        {"request_id": queued.request_id},
    )
    assert len(trace_ids) == 1


async def wait_for_queue_position(client: SluiceClient, request_id: str) -> int:
    deadline = time.monotonic() + WAIT_S
    while True:
        status = await client.status(request_id)
        if status.get("queue_position") is not None or time.monotonic() > deadline:
            return status.get("queue_position")
        await asyncio.sleep(0.05)

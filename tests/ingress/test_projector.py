"""The `request-state` consumer of a running ingress: events published to JetStream become status records."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as redis
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient

from shared.bus import EventPublisher, make_broker
from shared.events import Envelope, Verdict
from shared.release_log import ReleaseLog, offset_to_entry_id
from shared.subjects import EVENTS_SUBJECT_PREFIX, REQUEST_STATE_CONSUMER

from services.ingress.projection import MODERATION_FINISH_REASON
from tests.ingress import event_builders as events
from tests.ingress.support import ApiKeys, bearer, wait_until

pytestmark = [pytest.mark.nats, pytest.mark.redis]

TERMINAL = {"blocked", "completed", "failed", "expired"}


@pytest.fixture(scope="module")
async def publisher(ingress_nats_url: str, ingress: str) -> AsyncIterator[EventPublisher]:
    broker: NatsBroker = make_broker(ingress_nats_url)
    await broker.connect()
    yield EventPublisher(broker)
    await broker.stop()


async def _publish(publisher: EventPublisher, envelopes: list[Envelope]) -> None:
    for envelope in envelopes:
        await publisher.publish(envelope)


async def _status_when(http: httpx.AsyncClient, key: str, request_id: str, statuses: set[str]) -> dict[str, Any]:
    async def read() -> dict[str, Any] | None:
        response = await http.get(f"/v1/requests/{request_id}", headers=bearer(key))
        body = response.json() if response.status_code == 200 else None
        return body if body and body["status"] in statuses else None

    body = await wait_until(read)
    assert body is not None, f"request {request_id} never reached {sorted(statuses)}"
    return body


async def _final_message(redis_client: redis.Redis, start: Envelope) -> dict[str, Any] | None:
    """Wait for the release log's final message; the projector appends it just after the status record."""
    release_log = ReleaseLog(redis_client, 60)

    async def read() -> dict[str, Any] | None:
        entries = await release_log.read(start.tenant, start.request_id, after_entry_id=offset_to_entry_id(0), block_ms=None)
        finals = [entry.data for entry in entries if entry.is_final]
        return finals[0] if finals else None

    return await wait_until(read)


async def test_completed_sequence_builds_full_record(
    publisher: EventPublisher, http: httpx.AsyncClient, api_keys: ApiKeys
) -> None:
    start = events.accepted()
    sequence = events.completed_sequence(start)
    await _publish(publisher, sequence)

    body = await _status_when(http, api_keys.acme, start.request_id, {"completed"})

    assert body["text"] == "The sea, the sea."
    assert body["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 12}
    assert body["variant"] == {"experiment_key": "temperature-test", "variant_key": "warm"}
    assert [item["scanner"] for item in body["verdicts"]["input"]] == ["BanSubstrings"]
    assert [item["scanner"] for item in body["verdicts"]["output"]] == ["BanSubstrings"]
    assert body["blocked_by"] is None
    assert body["error"] is None


async def test_timings_come_from_event_timestamps(
    publisher: EventPublisher, http: httpx.AsyncClient, api_keys: ApiKeys
) -> None:
    start = events.accepted()
    sequence = events.completed_sequence(start)
    await _publish(publisher, sequence)

    timings = (await _status_when(http, api_keys.acme, start.request_id, {"completed"}))["timings"]

    first_token, delivered = sequence[3], sequence[6]
    assert timings["first_token_at"] == first_token.ts.isoformat().replace("+00:00", "Z")
    assert timings["ttft_ms"] == pytest.approx((first_token.ts - start.ts).total_seconds() * 1000)
    assert timings["total_ms"] == pytest.approx((delivered.ts - start.ts).total_seconds() * 1000)


async def test_input_block_sets_blocked_and_final(
    publisher: EventPublisher, http: httpx.AsyncClient, api_keys: ApiKeys, redis_client: redis.Redis
) -> None:
    start = events.accepted()
    await _publish(publisher, [start, events.screened(start, Verdict.BLOCKED)])

    body = await _status_when(http, api_keys.acme, start.request_id, TERMINAL)

    assert body["status"] == "blocked"
    assert body["blocked_by"] == "PromptInjection"
    assert body["reason"] == "prompt injection detected"
    assert await _final_message(redis_client, start) == {
        "type": "final",
        "status": "blocked",
        "stage": "input",
        "blocked_by": "PromptInjection",
        "reason": "prompt injection detected",
    }


async def test_output_block_ends_as_blocked(publisher: EventPublisher, http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    start = events.accepted()
    sequence = [
        start,
        events.screened(start),
        events.assigned(start),
        events.first_token(start),
        events.completed(start),
        events.moderated(start, Verdict.BLOCKED),
        events.delivered(start, text="The sea", finish_reason=MODERATION_FINISH_REASON),
    ]
    await _publish(publisher, sequence)

    body = await _status_when(http, api_keys.acme, start.request_id, TERMINAL)

    assert body["status"] == "blocked"
    assert body["blocked_by"] == "BanSubstrings"
    assert body["text"] == "The sea"


async def test_failure_sets_error_and_final(
    publisher: EventPublisher, http: httpx.AsyncClient, api_keys: ApiKeys, redis_client: redis.Redis
) -> None:
    start = events.accepted()
    await _publish(publisher, [start, events.screened(start), events.assigned(start), events.failed(start)])

    body = await _status_when(http, api_keys.acme, start.request_id, TERMINAL)

    assert body["status"] == "failed"
    assert body["error"] == {"code": "backend_unavailable", "message": "the backend did not answer"}
    final = await _final_message(redis_client, start)
    assert final is not None
    assert final["status"] == "failed"


async def test_expiry_sets_expired_and_final(
    publisher: EventPublisher, http: httpx.AsyncClient, api_keys: ApiKeys, redis_client: redis.Redis
) -> None:
    start = events.accepted()
    await _publish(publisher, [start, events.expired(start)])

    body = await _status_when(http, api_keys.acme, start.request_id, TERMINAL)

    assert body["status"] == "expired"
    assert await _final_message(redis_client, start) == {"type": "final", "status": "expired"}


async def test_late_event_does_not_reopen_request(
    publisher: EventPublisher, http: httpx.AsyncClient, api_keys: ApiKeys
) -> None:
    start = events.accepted()
    late_first_token = events.first_token(start)
    await _publish(publisher, [start, events.delivered(start), late_first_token])

    async def first_token_recorded() -> dict[str, Any] | None:
        body = (await http.get(f"/v1/requests/{start.request_id}", headers=bearer(api_keys.acme))).json()
        return body if body.get("timings", {}).get("first_token_at") else None

    body = await wait_until(first_token_recorded)
    assert body is not None
    assert body["status"] == "completed"


async def test_in_progress_request_reads_generating(
    publisher: EventPublisher, http: httpx.AsyncClient, api_keys: ApiKeys
) -> None:
    start = events.accepted()
    await _publish(publisher, [start, events.screened(start), events.assigned(start), events.first_token(start)])

    body = await _status_when(http, api_keys.acme, start.request_id, {"generating"})

    assert body["text"] is None
    assert body["timings"]["ttft_ms"] > 0
    assert body["timings"]["total_ms"] is None


async def test_projected_record_scoped_to_tenant(
    publisher: EventPublisher, http: httpx.AsyncClient, api_keys: ApiKeys
) -> None:
    start = events.accepted(tenant="globex")
    await _publish(publisher, [start])
    await _status_when(http, api_keys.globex, start.request_id, {"screening"})

    response = await http.get(f"/v1/requests/{start.request_id}", headers=bearer(api_keys.acme))

    assert response.status_code == 404


async def test_projected_events_are_acked(
    publisher: EventPublisher, http: httpx.AsyncClient, api_keys: ApiKeys, nats_client: NatsClient
) -> None:
    start = events.accepted()
    await _publish(publisher, events.completed_sequence(start))
    await _status_when(http, api_keys.acme, start.request_id, {"completed"})
    js = nats_client.jetstream()

    async def all_acked() -> bool:
        info = await js.consumer_info(REQUEST_STATE_CONSUMER.stream, REQUEST_STATE_CONSUMER.durable)
        return info.num_ack_pending == 0 and info.num_pending == 0

    assert await wait_until(all_acked)
    info = await js.consumer_info(REQUEST_STATE_CONSUMER.stream, REQUEST_STATE_CONSUMER.durable)
    assert info.num_redelivered == 0


async def test_malformed_event_does_not_stall_batch(
    publisher: EventPublisher, http: httpx.AsyncClient, api_keys: ApiKeys, nats_client: NatsClient
) -> None:
    js = nats_client.jetstream()
    start = events.accepted()
    # Published together, so the projector very likely fetches them in one batch. The
    # subject is one no other test reads, so their readers never meet the malformed message.
    await js.publish(f"{EVENTS_SUBJECT_PREFIX}.projector-test.malformed", b"{not an envelope")
    await _publish(publisher, events.completed_sequence(start))

    body = await _status_when(http, api_keys.acme, start.request_id, {"completed"})

    assert body["status"] == "completed"

    async def settled() -> bool:
        info = await js.consumer_info(REQUEST_STATE_CONSUMER.stream, REQUEST_STATE_CONSUMER.durable)
        return info.num_ack_pending == 0 and info.num_pending == 0

    # The malformed message is terminated, not left pending for redelivery.
    assert await wait_until(settled)

"""The inference service on real nats-server and redis-server: completion, redelivery, expiry and failures."""

from __future__ import annotations

import time
from pathlib import Path

import nats.errors
import pytest
import redis.asyncio as redis
from nats.js import JetStreamContext

from services.inference import handler as handler_module
from services.inference.generation import FIRST_RETRY_DELAY_S, RETRY_DELAY_FACTOR
from shared import subjects
from shared.bus import ensure_consumer
from shared.events import Envelope, EventType, GenerationParams, VariantSpec, decode_envelope
from shared.experiments import DEFAULT_MAX_IN_FLIGHT_PER_ENDPOINT
from shared.release_log import ReleaseLog
from shared.subjects import EVENTS_STREAM, ConsumerSpec, assigned_subject
from tests.inference.harness import assigned_envelope, read_chunk_messages, running_inference, write_backends
from tests.inference.scripted_tgi import GOOD_EVENTS, ScriptedServer, chunk, error, stream
from tests.support.jetstream import publish_envelope, published_events, wait_for_event, wait_until_settled

pytestmark = [pytest.mark.nats, pytest.mark.redis]

WAIT_S = 60.0
TENANT = "acme"


def _assigned(backend: str = "embedded", deadline_in_s: float = 120.0, max_new_tokens: int = 24) -> Envelope:
    variant = VariantSpec(key="control", backend=backend, params=GenerationParams(temperature=0.8, max_new_tokens=max_new_tokens))
    return assigned_envelope(
        variant, tenant=TENANT, deadline_in_s=deadline_in_s, user_id="alice", experiment_key="sampling", hash_value=0.25
    )


async def _events_of(jetstream: JetStreamContext, request_id: str) -> list[Envelope]:
    """Return every EVENTS message of the request published so far."""
    return [envelope for envelope in await published_events(jetstream) if envelope.request_id == request_id]


def _queue_consumer(backend: str) -> ConsumerSpec:
    """Return the pool queue consumer of TENANT for a backend of the test backends file (one endpoint each)."""
    return subjects.pool_queue_consumer(backend, TENANT, DEFAULT_MAX_IN_FLIGHT_PER_ENDPOINT)


async def _deliver_once_without_ack(jetstream: JetStreamContext, assigned: Envelope) -> None:
    """Take the request's message from its pool queue consumer and nak it, so its next delivery is attempt 2."""
    spec = _queue_consumer(assigned.parsed_payload().variant.backend)
    await ensure_consumer(jetstream, spec)
    subscription = await jetstream.pull_subscribe_bind(spec.durable, stream=EVENTS_STREAM)
    try:
        while True:
            for msg in await subscription.fetch(16, timeout=5.0):
                await msg.nak()
                if decode_envelope(msg.data).request_id == assigned.request_id:
                    return
    finally:
        await subscription.unsubscribe()


@pytest.fixture
def backends_file(tmp_path: Path, model_server_url: str, scripted: ScriptedServer) -> Path:
    return write_backends(tmp_path, model_server_url, scripted.url)


@pytest.fixture
def offline_backends_file(tmp_path: Path, scripted: ScriptedServer) -> Path:
    """A backends file for tests that never reach the real model server."""
    return write_backends(tmp_path, "http://127.0.0.1:9", scripted.url)


async def test_chunks_concatenate_to_completed(
    jetstream: JetStreamContext, bus_url: str, redis_url: str, backends_file: Path
) -> None:
    assigned = _assigned()

    async with running_inference(bus_url, redis_url, backends_file):
        await publish_envelope(jetstream, assigned)
        completed = await wait_for_event(jetstream, EventType.COMPLETED, assigned.request_id, WAIT_S)
        first_token = await wait_for_event(jetstream, EventType.FIRST_TOKEN, assigned.request_id, WAIT_S)
    chunks = await read_chunk_messages(jetstream, assigned.request_id, WAIT_S)

    completed_payload = completed.parsed_payload()
    chunk_payloads = [chunk.parsed_payload() for chunk in chunks[:-1]]
    end_payload = chunks[-1].parsed_payload()
    assert completed_payload.text
    assert "".join(chunk.text for chunk in chunk_payloads) == completed_payload.text
    assert [chunk.seq for chunk in chunk_payloads] == list(range(len(chunk_payloads)))
    assert {chunk.attempt for chunk in chunk_payloads} == {1}
    assert completed_payload.attempt == 1
    assert completed_payload.variant_key == "control"
    assert completed_payload.usage.completion_tokens > 0
    assert completed_payload.usage.completion_tokens <= 24
    assert end_payload.finish_reason == completed_payload.finish_reason
    assert end_payload.error_code is None
    assert first_token.parsed_payload().backend_ttft_ms > 0
    assert first_token.parsed_payload().backend_ttft_ms <= completed_payload.generation_ms


async def test_redelivery_after_release_interrupted(
    jetstream: JetStreamContext, bus_url: str, redis_url: str, offline_backends_file: Path
) -> None:
    assigned = _assigned()
    client = redis.from_url(redis_url)
    await ReleaseLog(client, 60).append_chunk(TENANT, assigned.request_id, 0, "Good")
    await client.aclose()

    await publish_envelope(jetstream, assigned)
    await _deliver_once_without_ack(jetstream, assigned)
    async with running_inference(bus_url, redis_url, offline_backends_file):
        failed = await wait_for_event(jetstream, EventType.FAILED, assigned.request_id, WAIT_S)
    chunks = await read_chunk_messages(jetstream, assigned.request_id, WAIT_S)

    payload = failed.parsed_payload()
    assert payload.stage == "inference"
    assert payload.error_code == "interrupted"
    assert [chunk.type for chunk in chunks] == [EventType.END]
    assert chunks[0].parsed_payload().attempt == 2
    assert chunks[0].parsed_payload().error_code == "interrupted"
    assert EventType.COMPLETED not in {event.type for event in await _events_of(jetstream, assigned.request_id)}


async def test_redelivery_without_release_regenerates(
    jetstream: JetStreamContext, bus_url: str, redis_url: str, backends_file: Path
) -> None:
    assigned = _assigned()

    await publish_envelope(jetstream, assigned)
    await _deliver_once_without_ack(jetstream, assigned)
    async with running_inference(bus_url, redis_url, backends_file):
        completed = await wait_for_event(jetstream, EventType.COMPLETED, assigned.request_id, WAIT_S)
    chunks = await read_chunk_messages(jetstream, assigned.request_id, WAIT_S)

    assert completed.parsed_payload().attempt == 2
    assert {chunk.parsed_payload().attempt for chunk in chunks} == {2}


async def test_unreachable_backend_fails_after_retries(
    jetstream: JetStreamContext, bus_url: str, redis_url: str, offline_backends_file: Path
) -> None:
    assigned = _assigned(backend="unreachable")

    async with running_inference(bus_url, redis_url, offline_backends_file):
        started = time.monotonic()
        await publish_envelope(jetstream, assigned)
        failed = await wait_for_event(jetstream, EventType.FAILED, assigned.request_id, WAIT_S)
        elapsed_s = time.monotonic() - started
    chunks = await read_chunk_messages(jetstream, assigned.request_id, WAIT_S)

    payload = failed.parsed_payload()
    assert payload.stage == "inference"
    assert payload.error_code == "backend_unavailable"
    # Two waits between three tries: 0.5 s, then 1 s.
    assert elapsed_s >= FIRST_RETRY_DELAY_S * (1 + RETRY_DELAY_FACTOR)
    assert [chunk.type for chunk in chunks] == [EventType.END]
    assert chunks[0].parsed_payload().error_code == "backend_unavailable"
    assert EventType.FIRST_TOKEN not in {event.type for event in await _events_of(jetstream, assigned.request_id)}


async def test_backend_retry_then_completes(
    jetstream: JetStreamContext, bus_url: str, redis_url: str, offline_backends_file: Path, scripted: ScriptedServer
) -> None:
    scripted.reset(error(503, "overloaded"), stream(GOOD_EVENTS))
    assigned = _assigned(backend="scripted")

    async with running_inference(bus_url, redis_url, offline_backends_file):
        await publish_envelope(jetstream, assigned)
        completed = await wait_for_event(jetstream, EventType.COMPLETED, assigned.request_id, WAIT_S)

    payload = completed.parsed_payload()
    assert payload.text == "Good morrow"
    assert payload.finish_reason == "length"
    assert payload.usage.completion_tokens == 2
    assert len(scripted.bodies) == 2
    assert scripted.bodies[1]["temperature"] == 0.8
    assert scripted.bodies[1]["max_tokens"] == 24


async def test_rejected_request_not_retried(
    jetstream: JetStreamContext, bus_url: str, redis_url: str, offline_backends_file: Path, scripted: ScriptedServer
) -> None:
    scripted.reset(error(422, "validation"))
    assigned = _assigned(backend="scripted")

    async with running_inference(bus_url, redis_url, offline_backends_file):
        await publish_envelope(jetstream, assigned)
        failed = await wait_for_event(jetstream, EventType.FAILED, assigned.request_id, WAIT_S)

    assert failed.parsed_payload().error_code == "backend_rejected"
    assert len(scripted.bodies) == 1


async def test_break_after_chunks_fails_broken(
    jetstream: JetStreamContext, bus_url: str, redis_url: str, offline_backends_file: Path, scripted: ScriptedServer
) -> None:
    scripted.reset(stream([chunk("Good "), {"error": "scripted failure", "error_type": "generation"}]))
    assigned = _assigned(backend="scripted")

    async with running_inference(bus_url, redis_url, offline_backends_file):
        await publish_envelope(jetstream, assigned)
        failed = await wait_for_event(jetstream, EventType.FAILED, assigned.request_id, WAIT_S)
        await wait_for_event(jetstream, EventType.FIRST_TOKEN, assigned.request_id, WAIT_S)
    chunks = await read_chunk_messages(jetstream, assigned.request_id, WAIT_S)

    assert failed.parsed_payload().error_code == "stream_broken"
    assert len(scripted.bodies) == 1
    assert [chunk.type for chunk in chunks] == [EventType.CHUNK, EventType.END]
    assert chunks[0].parsed_payload().text == "Good "
    assert chunks[1].parsed_payload().error_code == "stream_broken"
    assert EventType.COMPLETED not in {event.type for event in await _events_of(jetstream, assigned.request_id)}


async def test_unknown_backend_waits_for_its_pool(
    jetstream: JetStreamContext, bus_url: str, redis_url: str, offline_backends_file: Path, scripted: ScriptedServer
) -> None:
    # Another deployment may serve a pool this one lacks, so the request waits in its queue instead of failing.
    assigned = _assigned(backend="gpu-pool")
    with_pool = offline_backends_file.parent / "with-gpu-pool.yaml"
    with_pool.write_text(
        offline_backends_file.read_text() + f"  gpu-pool: {{kind: tgi, url: '{scripted.url}'}}\n", encoding="utf-8"
    )

    async with running_inference(bus_url, redis_url, offline_backends_file):
        await publish_envelope(jetstream, assigned)
        with pytest.raises(nats.errors.TimeoutError):
            await wait_for_event(jetstream, EventType.FAILED, assigned.request_id, 2.0)
    async with running_inference(bus_url, redis_url, with_pool):
        completed = await wait_for_event(jetstream, EventType.COMPLETED, assigned.request_id, WAIT_S)

    assert completed.parsed_payload().backend == "gpu-pool"
    assert len(scripted.bodies) == 1


async def test_expired_request_published_expired(
    jetstream: JetStreamContext, bus_url: str, redis_url: str, offline_backends_file: Path
) -> None:
    assigned = _assigned(deadline_in_s=-1.0)

    async with running_inference(bus_url, redis_url, offline_backends_file):
        await publish_envelope(jetstream, assigned)
        expired = await wait_for_event(jetstream, EventType.EXPIRED, assigned.request_id, WAIT_S)

    assert expired.parsed_payload().stage == "inference"
    assert expired.parsed_payload().deadline == assigned.deadline


async def test_malformed_message_terminated(
    jetstream: JetStreamContext, bus_url: str, redis_url: str, offline_backends_file: Path
) -> None:
    spec = _queue_consumer("scripted")
    await ensure_consumer(jetstream, spec)
    async with running_inference(bus_url, redis_url, offline_backends_file):
        ack = await jetstream.publish(assigned_subject("scripted", TENANT), b'{"event_id": "x"}')
        info = await wait_until_settled(jetstream, spec, ack.seq, WAIT_S)

    assert info.num_ack_pending == 0
    assert info.num_redelivered == 0


async def test_long_generation_keeps_message(
    jetstream: JetStreamContext,
    bus_url: str,
    redis_url: str,
    offline_backends_file: Path,
    scripted: ScriptedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Generation takes 3 s against an ack_wait of 1 s: only the in-progress reports keep the message.
    monkeypatch.setattr(handler_module, "IN_PROGRESS_INTERVAL_S", 0.3)
    usual_spec = _queue_consumer("scripted")
    monkeypatch.setattr(subjects, "POOL_QUEUE_ACK_WAIT_S", 1.0)
    scripted.reset(stream([chunk(f"word{index} ") for index in range(5)] + [chunk("end", "length")], delay_s=0.5))
    assigned = _assigned(backend="scripted")

    async with running_inference(bus_url, redis_url, offline_backends_file):
        try:
            await publish_envelope(jetstream, assigned)
            completed = await wait_for_event(jetstream, EventType.COMPLETED, assigned.request_id, WAIT_S)
            info = await jetstream.consumer_info(EVENTS_STREAM, usual_spec.durable)
        finally:
            await ensure_consumer(jetstream, usual_spec)

    assert info.config.ack_wait == 1.0
    assert completed.parsed_payload().attempt == 1
    assert completed.parsed_payload().text == "word0 word1 word2 word3 word4 end"
    assert info.num_redelivered == 0
    assert len(scripted.bodies) == 1


async def test_requests_generate_concurrently(
    jetstream: JetStreamContext, bus_url: str, redis_url: str, offline_backends_file: Path, scripted: ScriptedServer
) -> None:
    # Each stream takes 1 s, so four one after another would take at least 4 s.
    scripted.reset(stream([chunk("Good "), chunk("morrow", "length")], delay_s=0.5))
    requests = [_assigned(backend="scripted") for _ in range(DEFAULT_MAX_IN_FLIGHT_PER_ENDPOINT)]

    async with running_inference(bus_url, redis_url, offline_backends_file):
        started = time.monotonic()
        for assigned in requests:
            await publish_envelope(jetstream, assigned)
        for assigned in requests:
            await wait_for_event(jetstream, EventType.COMPLETED, assigned.request_id, WAIT_S)
        elapsed_s = time.monotonic() - started

    assert elapsed_s < 3.0

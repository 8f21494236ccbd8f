"""Cancellation in the inference service: a marked request never reaches a model, a notice stops a running stream."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest
import redis.asyncio as redis
from nats.js import JetStreamContext

from services.inference.accounting import percentiles
from shared.cancellation import CANCELLED, CancelMarks, CancelNotice, cancel_subject
from shared.events import Envelope, EventType, GenerationParams, VariantSpec
from tests.inference.harness import assigned_envelope, running_inference, write_backends
from tests.inference.scripted_tgi import USAGE, ScriptedServer, chunk, stream
from tests.support.jetstream import publish_envelope, wait_for_event

pytestmark = [pytest.mark.nats, pytest.mark.redis]

WAIT_S = 30.0
TENANT = "acme"
# The scripted stream sends one piece every PIECE_DELAY_S seconds, slow enough
# to cancel in the middle of it.
PIECE_DELAY_S = 0.2
SLOW_PIECES = 40


def _assigned(backend: str = "scripted") -> Envelope:
    variant = VariantSpec(key="control", backend=backend, params=GenerationParams(max_new_tokens=64))
    return assigned_envelope(variant, tenant=TENANT)


@pytest.fixture
def backends_file(tmp_path: Path, scripted: ScriptedServer) -> Path:
    return write_backends(tmp_path, "http://127.0.0.1:9", scripted.url)


async def test_marked_request_skips_the_model(
    jetstream: JetStreamContext, bus_url: str, redis_url: str, backends_file: Path, scripted: ScriptedServer
) -> None:
    assigned = _assigned()
    client = redis.from_url(redis_url)
    await CancelMarks(client, 60).mark(TENANT, assigned.request_id, "client_request")
    await client.aclose()

    async with running_inference(bus_url, redis_url, backends_file):
        await publish_envelope(jetstream, assigned)
        cancelled = await wait_for_event(jetstream, EventType.CANCELLED, assigned.request_id, WAIT_S)

    payload = cancelled.parsed_payload()
    assert payload.reason == "client_request"
    assert payload.stage == "inference"
    assert payload.stats.completion_tokens == 0
    assert payload.stats.ttft_ms is None
    assert payload.stats.finish_reason == CANCELLED
    assert scripted.bodies == []


async def test_notice_stops_running_stream(
    jetstream: JetStreamContext, bus_url: str, redis_url: str, backends_file: Path, scripted: ScriptedServer
) -> None:
    pieces = [chunk(f"word{index} ") for index in range(SLOW_PIECES)]
    scripted.reset(stream([*pieces, chunk("end", "length"), chunk(None, usage=USAGE)], delay_s=PIECE_DELAY_S))
    assigned = _assigned()
    connection = await nats.connect(bus_url)

    async with running_inference(bus_url, redis_url, backends_file):
        await publish_envelope(jetstream, assigned)
        await wait_for_event(jetstream, EventType.FIRST_TOKEN, assigned.request_id, WAIT_S)
        await asyncio.sleep(3 * PIECE_DELAY_S)
        notice = CancelNotice(TENANT, assigned.request_id, "client_disconnected")
        await connection.publish(cancel_subject(TENANT, assigned.request_id), notice.encode())
        await connection.flush()
        cancelled = await wait_for_event(jetstream, EventType.CANCELLED, assigned.request_id, WAIT_S)
    await connection.close()

    stats = cancelled.parsed_payload().stats
    assert cancelled.parsed_payload().reason == "client_disconnected"
    # A few pieces arrived before the cancel, and far from all of them.
    assert 2 <= stats.completion_tokens < SLOW_PIECES // 2
    assert stats.prompt_tokens is None
    assert stats.ttft_ms is not None and stats.ttft_ms >= PIECE_DELAY_S * 1000 * 0.5
    assert stats.inter_token is not None
    assert stats.inter_token.p50_ms >= PIECE_DELAY_S * 1000 * 0.5
    assert len(scripted.bodies) == 1


def test_percentiles_nearest_rank() -> None:
    result = percentiles([float(value) for value in range(1, 101)])
    assert result is not None
    assert (result.p50_ms, result.p95_ms, result.p99_ms, result.max_ms) == (50.0, 95.0, 99.0, 100.0)


def test_percentiles_of_empty_list() -> None:
    assert percentiles([]) is None

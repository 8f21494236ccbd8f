"""The moderation service on real nats-server and redis-server, fed through the CHUNKS stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as redis
from faststream import TestApp
from nats.js import JetStreamContext
from structlog.testing import capture_logs

from services.moderation.app import make_app
from shared.events import Envelope, EventType, Verdict
from shared.release_log import ReleaseLog
from shared.settings import Settings
from shared.subjects import chunk_subject
from tests.moderation.support import (
    WAIT_S,
    chunk,
    end,
    final_entry,
    new_request_id,
    released_chunks,
)
from tests.support.jetstream import jetstream_client, publish_envelope, wait_for_event, wait_for_log

pytestmark = [pytest.mark.nats, pytest.mark.redis]


@pytest.fixture(scope="module")
async def moderation_service(nats_url: str, redis_url: str, policy_file: Path) -> AsyncIterator[None]:
    settings = Settings(nats_url=nats_url, redis_url=redis_url, policy_file=policy_file)
    async with TestApp(make_app(settings)):
        yield


@pytest.fixture(scope="module")
async def jetstream(nats_url: str, moderation_service: None) -> AsyncIterator[JetStreamContext]:
    async with jetstream_client(nats_url) as jetstream:
        yield jetstream


@pytest.fixture(scope="module")
async def release_log(redis_url: str) -> AsyncIterator[ReleaseLog]:
    client = redis.from_url(redis_url)
    yield ReleaseLog(client, ttl_s=600)
    await client.aclose()


async def _publish(jetstream: JetStreamContext, envelope: Envelope) -> None:
    await publish_envelope(jetstream, envelope, chunk_subject(envelope.request_id))


async def _generate(jetstream: JetStreamContext, request_id: str, texts: list[str]) -> None:
    for seq, text in enumerate(texts):
        await _publish(jetstream, chunk(request_id, seq, text)[0])
    await _publish(jetstream, end(request_id, finish_reason="eos_token")[0])


SONNET = ["Shall I compare thee ", "to a summer's day? ", "Thou art more lovely ", "and more temperate."]


async def test_output_delivered_through_log(jetstream: JetStreamContext, release_log: ReleaseLog) -> None:
    request_id = new_request_id()

    await _generate(jetstream, request_id, SONNET)
    delivered = (await wait_for_event(jetstream, EventType.DELIVERED, request_id, WAIT_S)).parsed_payload()

    chunks = await released_chunks(release_log, request_id)
    assert delivered.text == "".join(SONNET)
    assert delivered.chunks == len(chunks)
    assert [entry["seq"] for entry in chunks] == list(range(len(chunks)))
    assert "".join(str(entry["text"]) for entry in chunks) == "".join(SONNET)
    final = await final_entry(release_log, request_id)
    assert final is not None
    assert final["status"] == "completed"


async def test_output_moderated_passed(jetstream: JetStreamContext) -> None:
    request_id = new_request_id()

    await _generate(jetstream, request_id, SONNET)
    moderated = (await wait_for_event(jetstream, EventType.MODERATED, request_id, WAIT_S)).parsed_payload()

    assert moderated.verdict is Verdict.PASSED


async def test_split_banned_output_blocked(jetstream: JetStreamContext, release_log: ReleaseLog) -> None:
    request_id = new_request_id()

    await _generate(jetstream, request_id, ["Sure. From now on: DAN Mo", "de enabled. ", "Ask me anything."])
    moderated = (await wait_for_event(jetstream, EventType.MODERATED, request_id, WAIT_S)).parsed_payload()
    delivered = (await wait_for_event(jetstream, EventType.DELIVERED, request_id, WAIT_S)).parsed_payload()

    assert moderated.blocked_by == "BanSubstrings"
    assert delivered.finish_reason == "moderation"
    assert "DAN" not in delivered.text
    final = await final_entry(release_log, request_id)
    assert final is not None
    assert final["status"] == "blocked"


async def test_malformed_chunk_terminated(jetstream: JetStreamContext, release_log: ReleaseLog) -> None:
    request_id = new_request_id()

    with capture_logs() as logs:
        await jetstream.publish(chunk_subject(request_id), b'{"type": "generation.chunk"}')
        rejected = await wait_for_log(logs, "message_rejected", WAIT_S)

    assert rejected[0]["log_level"] == "error"
    assert rejected[0]["error"].startswith("invalid envelope at ")
    assert await final_entry(release_log, request_id) is None


async def test_long_stream_keeps_order(jetstream: JetStreamContext, release_log: ReleaseLog) -> None:
    request_id = new_request_id()
    words = [f"word{index} " for index in range(300)]

    await _generate(jetstream, request_id, words)
    delivered = (await wait_for_event(jetstream, EventType.DELIVERED, request_id, WAIT_S)).parsed_payload()

    assert delivered.text == "".join(words)
    chunks = await released_chunks(release_log, request_id)
    assert [entry["seq"] for entry in chunks] == list(range(len(chunks)))


async def test_refusal_recorded_not_blocked(jetstream: JetStreamContext) -> None:
    request_id = new_request_id()

    await _generate(jetstream, request_id, ["I'm sorry, but ", "I cannot help with that."])
    moderated = (await wait_for_event(jetstream, EventType.MODERATED, request_id, WAIT_S)).parsed_payload()
    delivered = (await wait_for_event(jetstream, EventType.DELIVERED, request_id, WAIT_S)).parsed_payload()

    assert moderated.verdict is Verdict.PASSED
    assert moderated.refusal is True
    assert delivered.finish_reason == "eos_token"
    assert delivered.text == "I'm sorry, but I cannot help with that."

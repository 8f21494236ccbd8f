"""The moderator on real redis-server and nats-server: release log contents and events per outcome."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import nats
import pytest
import redis.asyncio as redis
from faststream.nats import NatsBroker
from nats.js import JetStreamContext

from services.moderation.holdback import OutputPolicy
from services.moderation.moderator import (
    CHUNK_MISSING,
    INTERRUPTED,
    MAX_EARLY_DELIVERIES,
    STATE_LOST,
    Disposition,
    Moderator,
)
from services.moderation.sink import DeliveryFailed, OutputSink
from services.moderation.stream import StreamTable
from shared.bus import EventPublisher, ensure_jetstream, make_broker
from shared.events import ChunkPayload, EndPayload, Envelope, EventType, Verdict
from shared.release_log import ReleaseLog
from shared.scanning import parse_policy
from tests.moderation.support import (
    REDACTING_POLICY,
    REDACTING_TENANT,
    TENANT,
    chunk,
    end,
    events_of,
    final_entry,
    new_request_id,
    released_chunks,
)
from tests.support.metrics import render, sample_value

pytestmark = [pytest.mark.nats, pytest.mark.redis]

PayloadT = TypeVar("PayloadT", ChunkPayload, EndPayload)

# Far longer than any test, so no stream is evicted while a test runs.
IDLE_TIMEOUT_S = 600.0


@pytest.fixture(scope="module")
async def broker(nats_url: str) -> AsyncIterator[NatsBroker]:
    broker = make_broker(nats_url)
    connection = await broker.connect()
    await ensure_jetstream(connection.jetstream())
    yield broker
    await broker.stop()


@pytest.fixture(scope="module")
async def jetstream(nats_url: str, broker: NatsBroker) -> AsyncIterator[JetStreamContext]:
    client = await nats.connect(nats_url)
    yield client.jetstream()
    await client.close()


@pytest.fixture(scope="module")
async def release_log(redis_url: str) -> AsyncIterator[ReleaseLog]:
    client = redis.from_url(redis_url)
    yield ReleaseLog(client, ttl_s=600)
    await client.aclose()


def _in_force(output_policy: OutputPolicy) -> Callable[[], OutputPolicy]:
    return lambda: output_policy


@pytest.fixture
def table() -> StreamTable:
    return StreamTable(idle_timeout_s=IDLE_TIMEOUT_S)


@pytest.fixture
def moderator(output_policy: OutputPolicy, release_log: ReleaseLog, broker: NatsBroker, table: StreamTable) -> Moderator:
    return Moderator(_in_force(output_policy), OutputSink(release_log, EventPublisher(broker)), table)


async def _stream(moderator: Moderator, request_id: str, texts: list[str], attempt: int = 1) -> None:
    for seq, text in enumerate(texts):
        assert await moderator.handle_chunk(*chunk(request_id, seq, text, attempt), deliveries=1) is Disposition.ACK


CLEAN_OUTPUT = ["To be, or not ", "to be, that is ", "the question: ", "whether 'tis nobler ", "in the mind"]


async def test_clean_output_released_whole(moderator: Moderator, release_log: ReleaseLog) -> None:
    request_id = new_request_id()

    await _stream(moderator, request_id, CLEAN_OUTPUT)
    await moderator.handle_end(*end(request_id), deliveries=1)

    chunks = await released_chunks(release_log, request_id)
    assert [entry["seq"] for entry in chunks] == list(range(len(chunks)))
    assert "".join(str(entry["text"]) for entry in chunks) == "".join(CLEAN_OUTPUT)


async def test_clean_output_final_completed(moderator: Moderator, release_log: ReleaseLog) -> None:
    request_id = new_request_id()

    await _stream(moderator, request_id, CLEAN_OUTPUT)
    await moderator.handle_end(*end(request_id, finish_reason="eos_token"), deliveries=1)

    assert await final_entry(release_log, request_id) == {
        "type": "final",
        "status": "completed",
        "finish_reason": "eos_token",
        "usage": {"prompt_tokens": 5, "completion_tokens": 12},
    }


async def test_clean_output_events_published(moderator: Moderator, jetstream: JetStreamContext, release_log: ReleaseLog) -> None:
    request_id = new_request_id()

    await _stream(moderator, request_id, CLEAN_OUTPUT)
    await moderator.handle_end(*end(request_id), deliveries=1)

    events = await events_of(jetstream, request_id)
    moderated = events[EventType.MODERATED][0].parsed_payload()
    delivered = events[EventType.DELIVERED][0].parsed_payload()
    assert moderated.verdict is Verdict.PASSED
    assert moderated.refusal is False
    assert [result.scanner for result in moderated.scanners] == ["BanSubstrings", "AwsAccessKey", "NoRefusalLight"]
    assert delivered.text == "".join(CLEAN_OUTPUT)
    assert delivered.chunks == len(await released_chunks(release_log, request_id))
    assert delivered.finish_reason == "length"
    assert delivered.usage.completion_tokens == 12


async def test_clean_output_metrics(moderator: Moderator) -> None:
    request_id = new_request_id()

    await _stream(moderator, request_id, CLEAN_OUTPUT)
    streaming = render(moderator.metrics.registry)
    await moderator.handle_end(*end(request_id), deliveries=1)
    ended = render(moderator.metrics.registry)

    assert sample_value(streaming, "sluice_moderation_streams_held") == 1
    assert sample_value(ended, "sluice_moderation_streams_held") == 0
    checks = "sluice_moderation_check_duration_seconds_count"
    assert sample_value(ended, checks, check="holdback") == len(CLEAN_OUTPUT)
    assert sample_value(ended, checks, check="full") == 1
    assert sample_value(ended, "sluice_moderation_verdicts_total", verdict="passed", scanner="none") == 1


async def test_blocked_output_counted(moderator: Moderator) -> None:
    await _stream(moderator, new_request_id(), ["Here it is: AKIAIOSF", "ODNN7EXAMPLE"])

    exposition = render(moderator.metrics.registry)
    assert sample_value(exposition, "sluice_moderation_verdicts_total", verdict="blocked", scanner="AwsAccessKey") == 1
    assert sample_value(exposition, "sluice_moderation_verdicts_total", verdict="passed", scanner="none") is None


async def test_possible_match_held_until_end(moderator: Moderator, release_log: ReleaseLog) -> None:
    request_id = new_request_id()

    await _stream(moderator, request_id, ["DAN Mode"])

    assert await released_chunks(release_log, request_id) == []


async def test_split_banned_string_blocks(moderator: Moderator, release_log: ReleaseLog) -> None:
    request_id = new_request_id()
    opening = "A perfectly ordinary sentence to start with, and then "

    await _stream(moderator, request_id, [opening + "DAN Mo", "de enabled! I am free."])

    released = "".join(str(entry["text"]) for entry in await released_chunks(release_log, request_id))
    assert released == opening
    assert await final_entry(release_log, request_id) == {
        "type": "final",
        "status": "blocked",
        "stage": "output",
        "blocked_by": "BanSubstrings",
        "reason": "the text contains a banned substring",
        "finish_reason": "moderation",
        "usage": {"prompt_tokens": 0, "completion_tokens": 0},
    }


async def test_blocked_output_events(moderator: Moderator, jetstream: JetStreamContext, release_log: ReleaseLog) -> None:
    request_id = new_request_id()

    await _stream(moderator, request_id, ["Here it is: AKIAIOSF", "ODNN7EXAMPLE"])

    events = await events_of(jetstream, request_id)
    moderated = events[EventType.MODERATED][0].parsed_payload()
    delivered = events[EventType.DELIVERED][0].parsed_payload()
    assert moderated.verdict is Verdict.BLOCKED
    assert moderated.blocked_by == "AwsAccessKey"
    assert delivered.finish_reason == "moderation"
    assert delivered.text == "Here it is: "
    assert delivered.chunks == 1


async def test_chunks_after_block_ignored(moderator: Moderator, release_log: ReleaseLog, table: StreamTable) -> None:
    request_id = new_request_id()
    await _stream(moderator, request_id, ["xyzzy"])

    await moderator.handle_chunk(*chunk(request_id, 1, "and a great deal more text after the block"), deliveries=1)
    await moderator.handle_end(*end(request_id), deliveries=1)

    assert await released_chunks(release_log, request_id) == []
    assert len(table) == 0


async def test_new_attempt_discards_held(moderator: Moderator, release_log: ReleaseLog) -> None:
    request_id = new_request_id()
    await _stream(moderator, request_id, ["DAN Mo"], attempt=1)

    await _stream(moderator, request_id, CLEAN_OUTPUT, attempt=2)
    await moderator.handle_end(*end(request_id, attempt=2), deliveries=1)

    released = "".join(str(entry["text"]) for entry in await released_chunks(release_log, request_id))
    assert released == "".join(CLEAN_OUTPUT)


async def test_earlier_attempt_ignored(moderator: Moderator, release_log: ReleaseLog) -> None:
    request_id = new_request_id()
    await _stream(moderator, request_id, CLEAN_OUTPUT, attempt=2)

    await moderator.handle_chunk(*chunk(request_id, 5, " stale words from attempt one", attempt=1), deliveries=1)
    await moderator.handle_end(*end(request_id, attempt=2), deliveries=1)

    released = "".join(str(entry["text"]) for entry in await released_chunks(release_log, request_id))
    assert released == "".join(CLEAN_OUTPUT)


async def test_new_attempt_after_release_fails(moderator: Moderator, release_log: ReleaseLog, jetstream: JetStreamContext) -> None:
    request_id = new_request_id()
    await _stream(moderator, request_id, CLEAN_OUTPUT, attempt=1)

    await moderator.handle_chunk(*chunk(request_id, 0, "A second answer", attempt=2), deliveries=1)

    final = await final_entry(release_log, request_id)
    assert final is not None
    assert final["status"] == "failed"
    assert final["error_code"] == INTERRUPTED
    failed = (await events_of(jetstream, request_id))[EventType.FAILED][0].parsed_payload()
    assert failed.stage == "moderation"
    assert failed.error_code == INTERRUPTED


async def test_redelivered_chunk_not_doubled(moderator: Moderator, release_log: ReleaseLog) -> None:
    request_id = new_request_id()

    for seq in (0, 0, 1, 1, 2, 3, 4):
        await moderator.handle_chunk(*chunk(request_id, seq, CLEAN_OUTPUT[seq]), deliveries=1)
    await moderator.handle_end(*end(request_id), deliveries=1)
    await moderator.handle_end(*end(request_id), deliveries=2)

    released = "".join(str(entry["text"]) for entry in await released_chunks(release_log, request_id))
    assert released == "".join(CLEAN_OUTPUT)


async def test_generation_error_final_failed(moderator: Moderator, release_log: ReleaseLog, jetstream: JetStreamContext) -> None:
    request_id = new_request_id()
    await _stream(moderator, request_id, ["partial"])

    await moderator.handle_end(*end(request_id, error_code="stream_broken"), deliveries=1)

    assert await final_entry(release_log, request_id) == {
        "type": "final",
        "status": "failed",
        "error_code": "stream_broken",
        "message": "backend said stream_broken",
    }
    assert await events_of(jetstream, request_id) == {}


async def test_chunk_without_predecessors_fails(moderator: Moderator, release_log: ReleaseLog, jetstream: JetStreamContext) -> None:
    request_id = new_request_id()

    await moderator.handle_chunk(*chunk(request_id, 3, "middle of something"), deliveries=1)

    final = await final_entry(release_log, request_id)
    assert final is not None
    assert final["error_code"] == STATE_LOST
    assert EventType.FAILED in await events_of(jetstream, request_id)


async def test_refusal_flagged_not_blocked(moderator: Moderator, jetstream: JetStreamContext, release_log: ReleaseLog) -> None:
    request_id = new_request_id()

    await _stream(moderator, request_id, ["I'm sorry, but I cannot help with that."])
    await moderator.handle_end(*end(request_id), deliveries=1)

    moderated = (await events_of(jetstream, request_id))[EventType.MODERATED][0].parsed_payload()
    assert moderated.verdict is Verdict.PASSED
    assert moderated.refusal is True
    assert [result.scanner for result in moderated.scanners if not result.valid] == ["NoRefusalLight"]
    assert [(result.scanner, result.action) for result in moderated.scanners if result.action] == [("NoRefusalLight", "flag")]
    final = await final_entry(release_log, request_id)
    assert final is not None
    assert final["status"] == "completed"


async def test_empty_output_completes(moderator: Moderator, release_log: ReleaseLog, jetstream: JetStreamContext) -> None:
    request_id = new_request_id()

    await moderator.handle_end(*end(request_id, completion_tokens=0), deliveries=1)

    delivered = (await events_of(jetstream, request_id))[EventType.DELIVERED][0].parsed_payload()
    assert delivered.text == ""
    assert delivered.chunks == 0
    final = await final_entry(release_log, request_id)
    assert final is not None
    assert final["status"] == "completed"


async def test_early_chunk_waits(moderator: Moderator, release_log: ReleaseLog) -> None:
    request_id = new_request_id()
    await _stream(moderator, request_id, CLEAN_OUTPUT[:1])

    assert await moderator.handle_chunk(*chunk(request_id, 2, CLEAN_OUTPUT[2]), deliveries=1) is Disposition.RETRY
    assert await moderator.handle_end(*end(request_id), deliveries=1) is Disposition.RETRY
    await moderator.handle_chunk(*chunk(request_id, 1, CLEAN_OUTPUT[1]), deliveries=2)
    await moderator.handle_chunk(*chunk(request_id, 2, CLEAN_OUTPUT[2]), deliveries=2)
    assert await moderator.handle_end(*end(request_id), deliveries=2) is Disposition.ACK

    released = "".join(str(entry["text"]) for entry in await released_chunks(release_log, request_id))
    assert released == "".join(CLEAN_OUTPUT[:3])


async def test_missing_chunk_fails_eventually(moderator: Moderator, release_log: ReleaseLog) -> None:
    request_id = new_request_id()
    await _stream(moderator, request_id, CLEAN_OUTPUT[:1])

    disposition = await moderator.handle_chunk(*chunk(request_id, 2, CLEAN_OUTPUT[2]), deliveries=MAX_EARLY_DELIVERIES)

    assert disposition is Disposition.ACK
    final = await final_entry(release_log, request_id)
    assert final is not None
    assert final["error_code"] == CHUNK_MISSING


async def test_failed_write_released_once(
    output_policy: OutputPolicy, moderator: Moderator, release_log: ReleaseLog, broker: NatsBroker, table: StreamTable
) -> None:
    request_id = new_request_id()
    unreachable = redis.from_url("redis://127.0.0.1:9/0")
    broken = Moderator(_in_force(output_policy), OutputSink(ReleaseLog(unreachable, ttl_s=600), EventPublisher(broker)), table)

    with pytest.raises(DeliveryFailed):
        await broken.handle_chunk(*chunk(request_id, 0, CLEAN_OUTPUT[0] * 3), deliveries=1)
    await unreachable.aclose()
    # The redelivered chunk reaches a moderator whose Redis works; the table is the same process state.
    await moderator.handle_chunk(*chunk(request_id, 0, CLEAN_OUTPUT[0] * 3), deliveries=2)
    await moderator.handle_end(*end(request_id), deliveries=1)

    released = "".join(str(entry["text"]) for entry in await released_chunks(release_log, request_id))
    assert released == CLEAN_OUTPUT[0] * 3


async def test_late_end_after_restart_harmless(
    output_policy: OutputPolicy, moderator: Moderator, release_log: ReleaseLog, broker: NatsBroker, jetstream: JetStreamContext
) -> None:
    request_id = new_request_id()
    await _stream(moderator, request_id, CLEAN_OUTPUT)
    await moderator.handle_end(*end(request_id), deliveries=1)
    restarted = Moderator(_in_force(output_policy), OutputSink(release_log, EventPublisher(broker)), StreamTable(IDLE_TIMEOUT_S))

    await restarted.handle_end(*end(request_id), deliveries=2)

    final = await final_entry(release_log, request_id)
    assert final is not None
    assert final["status"] == "completed"
    assert EventType.FAILED not in await events_of(jetstream, request_id)


async def test_policy_change_spares_open_stream(
    output_policy: OutputPolicy, release_log: ReleaseLog, broker: NatsBroker, table: StreamTable
) -> None:
    """A stream finishes with the scanners it opened with; streams opened after the change use the new ones."""
    stricter_policy = {"output": [{"type": "BanSubstrings", "options": {"substrings": ["nobler"]}}]}
    stricter = OutputPolicy(parse_policy(stricter_policy, source="stricter"))
    in_force = [output_policy]
    moderator = Moderator(lambda: in_force[0], OutputSink(release_log, EventPublisher(broker)), table)
    opened_before, opened_after = new_request_id(), new_request_id()

    await moderator.handle_chunk(*chunk(opened_before, 0, CLEAN_OUTPUT[0]), deliveries=1)
    in_force[0] = stricter
    for seq, text in enumerate(CLEAN_OUTPUT[1:], start=1):
        await moderator.handle_chunk(*chunk(opened_before, seq, text), deliveries=1)
    await moderator.handle_end(*end(opened_before), deliveries=1)
    await _stream(moderator, opened_after, CLEAN_OUTPUT)
    await moderator.handle_end(*end(opened_after), deliveries=1)

    before_final = await final_entry(release_log, opened_before)
    after_final = await final_entry(release_log, opened_after)
    assert before_final is not None
    assert before_final["status"] == "completed"
    assert after_final is not None
    assert after_final["status"] == "blocked"
    assert after_final["blocked_by"] == "BanSubstrings"


def _as_tenant(message: tuple[Envelope, PayloadT], tenant: str) -> tuple[Envelope, PayloadT]:
    envelope, payload = message
    return envelope.model_copy(update={"tenant": tenant}), payload


async def _released_text_of(release_log: ReleaseLog, tenant: str, request_id: str) -> str:
    entries = await release_log.read(tenant, request_id, after_entry_id="0-0", block_ms=None)
    return "".join(str(entry.data["text"]) for entry in entries if not entry.is_final)


async def test_tenant_override_applies_to_its_streams(
    release_log: ReleaseLog, broker: NatsBroker, jetstream: JetStreamContext, table: StreamTable
) -> None:
    """The tenant whose output list redacts email addresses gets them redacted; another tenant's stream is untouched."""
    output_policy = OutputPolicy(parse_policy(REDACTING_POLICY, source="redacting"))
    moderator = Moderator(lambda: output_policy, OutputSink(release_log, EventPublisher(broker)), table)
    output = ["Write to jane.d", "oe@example.com", " for the report."]
    redacting_request, other_request = new_request_id(), new_request_id()

    for tenant, request_id in [(REDACTING_TENANT, redacting_request), (TENANT, other_request)]:
        for seq, text in enumerate(output):
            await moderator.handle_chunk(*_as_tenant(chunk(request_id, seq, text), tenant), deliveries=1)
        await moderator.handle_end(*_as_tenant(end(request_id), tenant), deliveries=1)

    assert await _released_text_of(release_log, REDACTING_TENANT, redacting_request) == "Write to [EMAIL] for the report."
    assert await _released_text_of(release_log, TENANT, other_request) == "".join(output)
    delivered = (await events_of(jetstream, redacting_request))[EventType.DELIVERED][0].parsed_payload()
    assert delivered.text == "Write to [EMAIL] for the report."
    # The output is shorter than the holdback, so the final check still finds the raw address and records a redaction.
    moderated = (await events_of(jetstream, redacting_request))[EventType.MODERATED][0].parsed_payload()
    assert [(result.scanner, result.action) for result in moderated.scanners if result.action] == [("PII", "redact")]

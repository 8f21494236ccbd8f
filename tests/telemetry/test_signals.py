"""Each signal-bearing event gets one `request_signals` row with the values computed from its payload."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import timedelta

import clickhouse_connect
import pytest

from services.telemetry.migrations import load_migrations
from services.telemetry.signals import SignalBuilder
from services.telemetry.store import EventStore
from services.telemetry.text_storage import TextStorage
from shared.events import Envelope, EventType, FailedPayload, GenerationStats, ScannerResult, utc_now
from shared.scanning import parse_policy
from shared.scanning.pii import PiiDetector
from tests.telemetry.signal_events import (
    ENDPOINT,
    OUTPUT,
    PROMPT_TOKENS_CL100K,
    SYSTEM_PROMPT,
    USER_PROMPT,
    accepted,
    at,
    request_events,
    rows,
    signal_rows,
)

pytestmark = pytest.mark.clickhouse

EMAIL = "jane.doe@example.com"
STORAGE_POLICY = {
    "storage": {"prompt": "redacted", "output": "redacted"},
    "routes": {"/v1/chat/completions": {"storage": {"prompt": "hashed", "output": "hashed"}}},
    "tenants": {
        "raw-co": {"storage": {"prompt": "raw", "output": "raw"}},
        "quiet-co": {"storage": {"prompt": "none", "output": "none"}},
    },
}


@pytest.fixture
async def store(clickhouse_dsn: str) -> AsyncIterator[EventStore]:
    store = EventStore.open(clickhouse_dsn, query_max_execution_time_s=5)
    await store.migrate(load_migrations())
    yield store
    store.close()


async def _stored_request(store: EventStore, request_id: str = "r1") -> dict[str, dict]:
    await store.insert_new(rows(request_events(request_id), SignalBuilder()))
    stored = await signal_rows(store, "request_id = {request_id:String}", {"request_id": request_id})
    return {row["type"]: row for row in stored}


async def test_signal_row_per_event_type(store: EventStore) -> None:
    by_type = await _stored_request(store)

    assert sorted(by_type) == sorted(
        [
            "request.accepted",
            "request.screened",
            "request.assigned",
            "generation.completed",
            "output.moderated",
            "output.delivered",
        ]
    )


async def test_accepted_prompt_signals(store: EventStore) -> None:
    row = (await _stored_request(store))["request.accepted"]

    assert row["prompt_chars"] == len(SYSTEM_PROMPT) + len(USER_PROMPT) == 38
    assert row["prompt_tokens"] == PROMPT_TOKENS_CL100K
    assert row["attributes"] == {"app": "docs", "locale": "en"}
    assert row["prompt_text"] == f"{SYSTEM_PROMPT}\n{USER_PROMPT}"
    assert row["prompt_embedding"] == []
    assert row["variant"] == ""


async def test_screened_scores(store: EventStore) -> None:
    row = (await _stored_request(store))["request.screened"]

    assert row["screening_scores"] == {"PromptInjection": 0.125, "Toxicity": 0.0625}
    assert row["screening_verdict"] == "passed"
    assert row["screening_blocked_by"] == ""
    assert row["screening_actions"] == {}
    assert row["refusal"] is None


def _screened_with(request_id: str, scanners: list[dict]) -> Envelope:
    screened = request_events(request_id)[1]
    payload = {**screened.payload, "verdict": "blocked", "blocked_by": "BanSubstrings", "scanners": scanners}
    return screened.model_copy(update={"payload": payload})


async def test_screened_actions_by_scanner(store: EventStore) -> None:
    results = [
        ScannerResult(scanner="PII", valid=True, risk_score=1.0, duration_ms=1.0, action="redact"),
        ScannerResult(scanner="BanSubstrings", valid=False, risk_score=1.0, duration_ms=1.0, action="block"),
        ScannerResult(scanner="Regex", valid=False, risk_score=1.0, duration_ms=1.0, action="block"),
        ScannerResult(scanner="PromptClassifier", valid=False, risk_score=0.75, duration_ms=1.0, action="flag"),
        ScannerResult(scanner="TokenLimit", valid=True, risk_score=0.0, duration_ms=1.0),
    ]
    envelope = _screened_with("r1", [result.model_dump(mode="json") for result in results])

    await store.insert_new(rows([envelope], SignalBuilder()))

    (row,) = await signal_rows(store)
    assert row["screening_actions"] == {
        "PII": "redact",
        "BanSubstrings": "block",
        "Regex": "block",
        "PromptClassifier": "flag",
    }
    assert row["screening_blocked_by"] == "BanSubstrings"
    assert row["moderation_actions"] == {}


async def test_results_without_action_store_empty_map(store: EventStore) -> None:
    # Scanner results as events carried them before `action` existed.
    results = [{"scanner": "BanSubstrings", "valid": False, "risk_score": 1.0, "duration_ms": 1.0}]

    await store.insert_new(rows([_screened_with("r1", results)], SignalBuilder()))

    (row,) = await signal_rows(store)
    assert row["screening_scores"] == {"BanSubstrings": 1.0}
    assert row["screening_actions"] == {}


async def test_assigned_variant(store: EventStore) -> None:
    row = (await _stored_request(store))["request.assigned"]

    assert (row["experiment"], row["variant"], row["model"], row["backend"]) == ("exp-1", "small", "qwen-0.5b", "tgi")
    assert row["prompt_chars"] is None


async def test_completed_latency_and_tokens(store: EventStore) -> None:
    row = (await _stored_request(store))["generation.completed"]

    assert row["queue_ms"] == 15.5
    assert row["ttft_ms"] == 42.25
    # queue_ms 15.5 plus generation_ms 250.
    assert row["total_ms"] == 265.5
    assert row["inter_token_p50_ms"] == 20.0
    assert row["inter_token_p99_ms"] == 35.0
    assert row["prompt_tokens"] == 12
    assert row["output_tokens"] == 5
    assert row["output_chars"] == len(OUTPUT)
    assert row["finish_reason"] == "length"
    assert row["endpoint"] == ENDPOINT
    assert row["output_text"] == ""


async def test_later_rows_carry_assignment(store: EventStore) -> None:
    by_type = await _stored_request(store)

    for event_type in ("generation.completed", "output.moderated", "output.delivered"):
        row = by_type[event_type]
        assert (row["experiment"], row["variant"], row["model"]) == ("exp-1", "small", "qwen-0.5b"), event_type


async def test_moderated_refusal_and_scores(store: EventStore) -> None:
    row = (await _stored_request(store))["output.moderated"]

    assert row["moderation_scores"] == {"Toxicity": 0.25, "NoRefusalLight": 1.0}
    assert row["moderation_verdict"] == "passed"
    assert row["moderation_actions"] == {"NoRefusalLight": "flag"}
    assert row["refusal"] is True


async def test_delivered_output_signals(store: EventStore) -> None:
    row = (await _stored_request(store))["output.delivered"]

    assert row["output_chars"] == len(OUTPUT)
    assert row["output_tokens"] == 5
    assert row["output_text"] == OUTPUT
    assert row["queue_ms"] is None


async def test_failed_generation_stats(store: EventStore) -> None:
    stats = GenerationStats(backend="tgi", prompt_tokens=9, completion_tokens=3, queue_ms=7.0, finish_reason="error")
    payload = FailedPayload(stage="inference", error_code="backend_error", message="backend returned 500", stats=stats)
    failed = accepted("r1").follow_up(EventType.FAILED, payload)

    await store.insert_new(rows([failed], SignalBuilder()))

    [row] = await signal_rows(store)
    assert (row["stage"], row["error_code"], row["finish_reason"]) == ("inference", "backend_error", "error")
    assert (row["prompt_tokens"], row["output_tokens"], row["queue_ms"]) == (9, 3, 7.0)
    assert row["ttft_ms"] is None
    assert row["variant"] == ""


async def test_invalid_payload_gets_no_signal_row(store: EventStore) -> None:
    completed = request_events("r1")[4]
    broken = completed.model_copy(update={"payload": {**completed.payload, "usage": "twelve"}})

    inserted = await store.insert_new(rows([broken], SignalBuilder()))

    assert inserted == 1
    assert await signal_rows(store) == []


async def test_redelivered_batch_not_stored_twice(store: EventStore, clickhouse_dsn: str) -> None:
    envelopes = request_events("r1")
    await store.insert_new(rows(envelopes, SignalBuilder()))
    # A new process remembers nothing, so only the lookups can tell.
    restarted = EventStore.open(clickhouse_dsn, query_max_execution_time_s=5)
    try:
        inserted = await restarted.insert_new([], redelivered=rows(envelopes, SignalBuilder()))
    finally:
        restarted.close()

    assert inserted == 0
    _, raw = await store.query("SELECT count() FROM request_signals", {})
    assert raw == [(6,)]
    _, exact = await store.query("SELECT count(), uniqExact(event_id) FROM request_signals FINAL", {})
    assert exact == [(6, 6)]


async def test_signals_stored_after_events_only(store: EventStore, clickhouse_dsn: str) -> None:
    # What a failed signals insert leaves: the events are stored, their
    # signal rows are not, and JetStream delivers the batch again.
    envelopes = request_events("r1")
    await store.insert_new([row._replace(signal=None) for row in rows(envelopes, SignalBuilder())])
    restarted = EventStore.open(clickhouse_dsn, query_max_execution_time_s=5)
    try:
        inserted = await restarted.insert_new([], redelivered=rows(envelopes, SignalBuilder()))
    finally:
        restarted.close()

    assert inserted == 0
    _, events = await store.query("SELECT count() FROM events", {})
    assert events == [(7,)]
    _, signals = await store.query("SELECT count() FROM request_signals", {})
    assert signals == [(6,)]


@pytest.mark.parametrize(
    ("tenant", "route", "expected_prompt", "expected_output"),
    [
        ("raw-co", None, f"{SYSTEM_PROMPT}\nWrite to {EMAIL}", f"Sent to {EMAIL}"),
        ("acme", None, f"{SYSTEM_PROMPT}\nWrite to [EMAIL]", "Sent to [EMAIL]"),
        ("quiet-co", None, "", ""),
        (
            "acme",
            "/v1/chat/completions",
            hashlib.sha256(SYSTEM_PROMPT.encode()).hexdigest()
            + "\n"
            + hashlib.sha256(f"Write to {EMAIL}".encode()).hexdigest(),
            hashlib.sha256(f"Sent to {EMAIL}".encode()).hexdigest(),
        ),
    ],
)
async def test_storage_modes_apply_to_texts(
    store: EventStore, tenant: str, route: str | None, expected_prompt: str, expected_output: str
) -> None:
    text_storage = TextStorage(parse_policy(STORAGE_POLICY, source="signals-test-policy"), PiiDetector())
    first = accepted("r1", tenant=tenant, prompt=f"Write to {EMAIL}", route=route)
    delivered = request_events("r1", tenant=tenant)[-1]
    delivered = delivered.model_copy(
        update={"route": route, "payload": {**delivered.payload, "text": f"Sent to {EMAIL}"}}
    )

    await store.insert_new(rows([first, delivered], SignalBuilder(), text_storage))

    by_type = {row["type"]: row for row in await signal_rows(store)}
    assert by_type["request.accepted"]["prompt_text"] == expected_prompt
    assert by_type["output.delivered"]["output_text"] == expected_output
    # Lengths are those of the published texts, whatever is stored.
    assert by_type["request.accepted"]["prompt_chars"] == len(SYSTEM_PROMPT) + len(f"Write to {EMAIL}")
    assert by_type["output.delivered"]["output_chars"] == len(f"Sent to {EMAIL}")


async def test_text_emptied_after_ttl(store: EventStore, clickhouse_dsn: str) -> None:
    old = at(accepted("old"), utc_now() - timedelta(days=31))
    recent = at(accepted("recent"), utc_now() - timedelta(days=29))
    await store.insert_new(rows([old, recent], SignalBuilder()))

    # ClickHouse applies a column TTL whenever it writes a part: at insert,
    # and in each merge, which OPTIMIZE forces here.
    client = clickhouse_connect.get_client(dsn=clickhouse_dsn)
    try:
        client.command("OPTIMIZE TABLE request_signals FINAL")
    finally:
        client.close()

    stored = {row["request_id"]: row for row in await signal_rows(store)}
    assert stored["old"]["prompt_text"] == ""
    assert stored["old"]["prompt_chars"] == 38
    assert stored["recent"]["prompt_text"] == f"{SYSTEM_PROMPT}\n{USER_PROMPT}"

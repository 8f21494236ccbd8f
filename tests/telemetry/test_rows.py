"""Envelopes become rows of the `events` table."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from services.telemetry.rows import EVENT_COLUMNS, InvalidEvent, decode_event, event_row, stored_payload
from shared.events import (
    AcceptedPayload,
    ChatMessage,
    Envelope,
    EventType,
    RequestSpec,
    ScreenedPayload,
    Verdict,
    new_envelope,
)

PROMPT = "a prompt that must be stored once"


def _accepted() -> Envelope:
    request = RequestSpec(messages=[ChatMessage(role="user", content=PROMPT)])
    payload = AcceptedPayload(request=request, prompt_chars=len(PROMPT))
    return new_envelope(EventType.ACCEPTED, request_id="r1", tenant="acme", payload=payload)


def _screened() -> Envelope:
    accepted = _accepted()
    payload = ScreenedPayload(request=accepted.parsed_payload().request, verdict=Verdict.PASSED, scanners=[])
    return accepted.follow_up(EventType.SCREENED, payload)


def test_accepted_payload_keeps_request() -> None:
    payload = json.loads(stored_payload(_accepted()))

    assert payload["request"]["messages"][0]["content"] == PROMPT
    assert payload["prompt_chars"] == len(PROMPT)


def test_later_payload_drops_request() -> None:
    payload = json.loads(stored_payload(_screened()))

    assert "request" not in payload
    assert payload["verdict"] == "passed"


def test_row_follows_column_order() -> None:
    envelope = _screened()

    row = dict(zip(EVENT_COLUMNS, event_row(envelope), strict=True))

    assert row["event_id"] == envelope.event_id
    assert row["type"] == "request.screened"
    assert row["tenant"] == "acme"
    assert row["ts"] == envelope.ts
    assert row["deadline"] is None


def test_row_converts_timestamps_to_utc() -> None:
    local = datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    envelope = _accepted().model_copy(update={"ts": local, "deadline": datetime(2026, 3, 1, 12, 5)})

    row = dict(zip(EVENT_COLUMNS, event_row(envelope), strict=True))

    assert row["ts"] == datetime(2026, 3, 1, 10, 0, tzinfo=timezone.utc)
    assert row["ts"].tzinfo == timezone.utc
    assert row["deadline"] == datetime(2026, 3, 1, 12, 5, tzinfo=timezone.utc)


def test_decode_accepts_envelope_json() -> None:
    envelope = _screened()

    assert decode_event(envelope.model_dump_json().encode()) == envelope


def test_decode_rejects_invalid_json() -> None:
    with pytest.raises(InvalidEvent, match="json_invalid"):
        decode_event(b"{not json")


def test_decode_error_omits_content() -> None:
    broken = _accepted().model_dump(mode="json")
    del broken["tenant"]
    broken["ts"] = PROMPT

    with pytest.raises(InvalidEvent) as caught:
        decode_event(json.dumps(broken).encode())

    assert "tenant (missing)" in str(caught.value)
    assert "ts (datetime_from_date_parsing)" in str(caught.value)
    assert PROMPT not in str(caught.value)


def test_decode_rejects_unknown_schema_version() -> None:
    data = _accepted().model_copy(update={"schema_version": 99}).model_dump_json().encode()

    with pytest.raises(InvalidEvent, match="schema_version 99"):
        decode_event(data)


def test_decode_rejects_timestamp_beyond_clickhouse() -> None:
    data = _accepted().model_copy(update={"ts": datetime(2400, 1, 1, tzinfo=timezone.utc)}).model_dump_json().encode()

    with pytest.raises(InvalidEvent, match="outside the range"):
        decode_event(data)

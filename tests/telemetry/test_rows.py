"""Envelopes become rows of the `events` table."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from services.telemetry.rows import EVENT_COLUMNS, InvalidEvent, decode_event
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


def _line(envelope: Envelope) -> dict:
    return json.loads(decode_event(envelope.model_dump_json().encode()).line)


def test_accepted_payload_keeps_request() -> None:
    payload = _line(_accepted())["payload"]

    assert payload["request"]["messages"][0]["content"] == PROMPT
    assert payload["prompt_chars"] == len(PROMPT)


def test_later_payload_drops_request() -> None:
    payload = _line(_screened())["payload"]

    assert "request" not in payload
    assert payload["verdict"] == "passed"


def test_columns_match_envelope_fields() -> None:
    assert set(EVENT_COLUMNS) == set(Envelope.model_fields)


def test_line_has_every_column() -> None:
    envelope = _screened()

    line = _line(envelope)

    assert set(line) == set(EVENT_COLUMNS)
    assert line["event_id"] == envelope.event_id
    assert line["type"] == "request.screened"
    assert line["tenant"] == "acme"
    assert datetime.fromisoformat(line["ts"]) == envelope.ts
    assert line["deadline"] is None


def test_row_converts_timestamps_to_utc() -> None:
    local = datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    envelope = _accepted().model_copy(update={"ts": local, "deadline": datetime(2026, 3, 1, 12, 5)})

    row = decode_event(envelope.model_dump_json().encode())
    line = json.loads(row.line)

    assert row.ts == datetime(2026, 3, 1, 10, 0, tzinfo=timezone.utc)
    assert row.ts.tzinfo == timezone.utc
    assert line["ts"] == "2026-03-01T10:00:00Z"
    assert line["deadline"] == "2026-03-01T12:05:00Z"


def test_decode_accepts_envelope_json() -> None:
    envelope = _screened()

    row = decode_event(envelope.model_dump_json().encode())

    assert row.event_id == envelope.event_id
    assert row.tenant == envelope.tenant
    assert row.ts == envelope.ts


def test_decode_accepts_lax_timestamp() -> None:
    # pydantic reads a space between date and time, but msgspec's RFC 3339 parser does not.
    data = _accepted().model_dump(mode="json")
    data["ts"] = "2026-03-01 12:00:00+02:00"

    row = decode_event(json.dumps(data).encode())

    assert row.ts == datetime(2026, 3, 1, 10, 0, tzinfo=timezone.utc)
    assert json.loads(row.line)["ts"] == "2026-03-01T10:00:00Z"


def test_lax_decode_drops_request() -> None:
    data = _screened().model_dump(mode="json")
    data["ts"] = "2026-03-01 12:00:00Z"

    payload = json.loads(decode_event(json.dumps(data).encode()).line)["payload"]

    assert "request" not in payload
    assert payload["verdict"] == "passed"


def test_payload_values_kept_verbatim() -> None:
    # The payload's values are not decoded, so the escape stays as sent.
    data = _screened().model_dump_json().replace('"verdict":"passed"', '"verdict":"pass\\u00e9d"').encode()

    line = decode_event(data).line

    assert b'"verdict":"pass\\u00e9d"' in line


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


def test_decode_rejects_unknown_field() -> None:
    data = _accepted().model_dump(mode="json") | {"priority": 1}

    with pytest.raises(InvalidEvent, match=r"priority \(extra_forbidden\)"):
        decode_event(json.dumps(data).encode())


def test_decode_rejects_non_object_payload() -> None:
    data = _accepted().model_dump(mode="json") | {"payload": [1, 2]}

    with pytest.raises(InvalidEvent, match=r"payload \(dict_type\)"):
        decode_event(json.dumps(data).encode())


def test_decode_rejects_offset_past_year_9999() -> None:
    data = _accepted().model_dump(mode="json") | {"ts": "9999-12-31T23:00:00-05:00"}

    with pytest.raises(InvalidEvent, match="outside the range"):
        decode_event(json.dumps(data).encode())


def test_decode_rejects_timestamp_beyond_clickhouse() -> None:
    data = _accepted().model_copy(update={"ts": datetime(2400, 1, 1, tzinfo=timezone.utc)}).model_dump_json().encode()

    with pytest.raises(InvalidEvent, match="outside the range"):
        decode_event(data)

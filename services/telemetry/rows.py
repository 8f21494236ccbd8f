"""Turning bus messages into rows of the `events` table."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from shared.consuming import MalformedMessage, decode_message
from shared.events import Envelope, EventType

# The columns the service writes, in row order; `inserted_at` takes its default.
EVENT_COLUMNS = ("event_id", "type", "schema_version", "request_id", "tenant", "ts", "deadline", "trace", "payload")

# DateTime64's range in ClickHouse. A row outside it would fail the whole
# batch's insert on every redelivery, so such an event is rejected alone.
MIN_STORED_TIMESTAMP = datetime(1900, 1, 1, tzinfo=timezone.utc)
MAX_STORED_TIMESTAMP = datetime(2299, 12, 31, 23, 59, 59, tzinfo=timezone.utc)

# Every stage after acceptance forwards the request, prompt included, so each
# message is self-contained. The table keeps it on request.accepted only.
_FORWARDED_REQUEST_FIELD = "request"


class InvalidEvent(MalformedMessage):
    """A message cannot be stored: it is not an envelope, its schema version is unknown, or a timestamp is out of range.

    The message describes the problem without the message's content.
    """


def decode_event(data: bytes) -> Envelope:
    """Parse one bus message into an envelope ready to store; raises `InvalidEvent`."""
    try:
        envelope = decode_message(data)
    except MalformedMessage as error:
        raise InvalidEvent(str(error)) from error
    _check_in_range("ts", envelope.ts)
    _check_in_range("deadline", envelope.deadline)
    return envelope


def event_row(envelope: Envelope) -> list[Any]:
    """Return the row of `envelope` in `EVENT_COLUMNS` order, timestamps in UTC."""
    return [
        envelope.event_id,
        envelope.type.value,
        envelope.schema_version,
        envelope.request_id,
        envelope.tenant,
        _as_utc(envelope.ts),
        None if envelope.deadline is None else _as_utc(envelope.deadline),
        envelope.trace,
        stored_payload(envelope),
    ]


def stored_payload(envelope: Envelope) -> str:
    """Return the payload as compact JSON, without the forwarded request unless the event is request.accepted."""
    payload = envelope.payload
    if envelope.type is not EventType.ACCEPTED:
        payload = {key: value for key, value in payload.items() if key != _FORWARDED_REQUEST_FIELD}
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def _as_utc(moment: datetime) -> datetime:
    # An envelope written without an offset means UTC, as every Sluice stage writes it.
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _check_in_range(field: str, moment: datetime | None) -> None:
    if moment is not None and not MIN_STORED_TIMESTAMP <= _as_utc(moment) <= MAX_STORED_TIMESTAMP:
        raise InvalidEvent(f"{field} {moment.isoformat()} is outside the range ClickHouse stores (years 1900 to 2299)")

"""Turning bus messages into rows of the `events` table.

The hot path decodes each message with msgspec into `_StoredFields`: it
checks the envelope fields that the table stores and keeps the payload's
values as raw JSON, so no Python object is built for the prompt or the
output. The row is then written back as one JSONEachRow line that
ClickHouse parses. A message that msgspec does not accept goes through
`shared.consuming.decode_message` (pydantic) instead. That path rejects a
malformed message with the same field-level error as every other consumer,
and it still stores an envelope that pydantic's lax parsing accepts, such as
a timestamp written with a space instead of `T`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, NamedTuple

import msgspec

from services.telemetry.signals import Signal, SignalBuilder, SignalEvent
from services.telemetry.text_storage import TextStorage
from shared.consuming import MalformedMessage, decode_message
from shared.events import ACCEPTED_SCHEMA_VERSIONS, CURRENT_SCHEMA_VERSION, Envelope, EventType

# The columns the service writes; `inserted_at` takes its default.
EVENT_COLUMNS = (
    "event_id",
    "type",
    "schema_version",
    "request_id",
    "tenant",
    "route",
    "ts",
    "deadline",
    "trace",
    "payload",
)

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


class EventRow(NamedTuple):
    """One event ready to insert: its JSONEachRow line, the fields the duplicate check reads, and its signal row."""

    event_id: str
    tenant: str
    # In UTC.
    ts: datetime
    # A JSON object whose keys are `EVENT_COLUMNS`, without a line break.
    line: bytes
    # The `request_signals` row, for the event types that have one.
    signal: Signal | None = None


class _StoredFields(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # The fields of `shared.events.Envelope`, which a test keeps in step with
    # this struct. The names are the columns' names, so the encoded struct is
    # the row's JSONEachRow line.
    event_id: str
    type: EventType
    schema_version: int = CURRENT_SCHEMA_VERSION
    request_id: str
    tenant: str
    ts: datetime
    deadline: datetime | None = None
    trace: dict[str, str] = {}
    route: str | None = None
    # Each value stays the JSON text it arrived as.
    payload: dict[str, msgspec.Raw]


_DECODER = msgspec.json.Decoder(_StoredFields)
_ENCODER = msgspec.json.Encoder()


def decode_event(
    data: bytes, text_storage: TextStorage | None = None, signals: SignalBuilder | None = None
) -> EventRow:
    """Parse one bus message into the row to store. Raises `InvalidEvent`.

    `text_storage` applies the policy's storage modes to the prompt and
    output texts; None stores them as they arrived. `signals` computes the
    event's signal row; None computes none.
    """
    try:
        fields = _DECODER.decode(data)
    except msgspec.MsgspecError:
        return _row_from_envelope(_decode_envelope(data), text_storage, signals)
    if fields.schema_version not in ACCEPTED_SCHEMA_VERSIONS:
        # The pydantic path raises the error that names the versions this build reads.
        return _row_from_envelope(_decode_envelope(data), text_storage, signals)
    return _row(fields, text_storage, signals)


def _row(fields: _StoredFields, text_storage: TextStorage | None, signals: SignalBuilder | None) -> EventRow:
    fields.ts = _stored_moment("ts", fields.ts)
    if fields.deadline is not None:
        fields.deadline = _stored_moment("deadline", fields.deadline)
    published = fields.payload
    fields.payload = _stored_payload(published, fields.type)
    if text_storage is not None:
        fields.payload = text_storage.apply(fields.type, fields.tenant, fields.route, fields.payload)
    signal = signals.build(_signal_event(fields, published)) if signals is not None else None
    return EventRow(fields.event_id, fields.tenant, fields.ts, _ENCODER.encode(fields), signal)


def _signal_event(fields: _StoredFields, published: dict[str, Any]) -> SignalEvent:
    return SignalEvent(
        fields.event_id, fields.type, fields.request_id, fields.tenant, fields.ts, published, fields.payload
    )


def _stored_payload(payload: dict[str, Any], event_type: EventType) -> dict[str, Any]:
    if event_type is EventType.ACCEPTED or _FORWARDED_REQUEST_FIELD not in payload:
        return payload
    return {key: value for key, value in payload.items() if key != _FORWARDED_REQUEST_FIELD}


def _decode_envelope(data: bytes) -> Envelope:
    try:
        return decode_message(data)
    except MalformedMessage as error:
        raise InvalidEvent(str(error)) from error


def _row_from_envelope(
    envelope: Envelope, text_storage: TextStorage | None, signals: SignalBuilder | None
) -> EventRow:
    # The struct does not check types when built directly, and the encoder
    # writes the payload's Python values as JSON.
    fields = _StoredFields(
        event_id=envelope.event_id,
        type=envelope.type,
        schema_version=envelope.schema_version,
        request_id=envelope.request_id,
        tenant=envelope.tenant,
        ts=envelope.ts,
        deadline=envelope.deadline,
        trace=envelope.trace,
        route=envelope.route,
        payload=envelope.payload,  # type: ignore[arg-type]
    )
    return _row(fields, text_storage, signals)


def _stored_moment(field: str, moment: datetime) -> datetime:
    try:
        utc = _as_utc(moment)
    except OverflowError:
        utc = None
    if utc is None or not MIN_STORED_TIMESTAMP <= utc <= MAX_STORED_TIMESTAMP:
        raise InvalidEvent(f"{field} {moment.isoformat()} is outside the range ClickHouse stores (years 1900 to 2299)")
    return utc


def _as_utc(moment: datetime) -> datetime:
    # An envelope written without an offset means UTC, as every Sluice stage
    # writes it. Converting a moment near year 1 or 9999 raises OverflowError.
    if moment.tzinfo is timezone.utc:
        return moment
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)

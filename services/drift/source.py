"""Reading each signal's per-request values for a (tenant, variant, time range) from `request_signals`, through the store API.

Every SQL string of the drift service's reads lives here. Telemetry
computes each value when it stores the event (see
schemas/clickhouse/003_request_signals.sql), from the text that crossed the
bus, so an output's length is right whatever the policy's storage mode
keeps of its text. A value comes from the row of one event type, and the
request's variant from its `request.assigned` row. Each request gives one
value per signal, even when a copy of its row escaped deduplication,
because the queries group by request id.

A signal's time is the time of the event it comes from (the prompt's when
the request was accepted, the output's when it was delivered), so a request
whose output arrives after a window closed counts in the next window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from services.drift.windows import SignalWindow
from shared.drift_signals import Signal
from shared.events import EventType
from shared.store_client import MAX_PAGE_SIZE, StoreClient

# A request's signal events lie within its deadline of its assignment (300 s
# by default, `SLUICE_REQUEST_TIMEOUT_S`). The variant lookup searches
# `request.assigned` events this far before and after the time range, which
# covers deadlines of up to an hour.
ASSIGNMENT_SEARCH_MARGIN = timedelta(hours=1)

_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


@dataclass(frozen=True)
class _SignalQuery:
    """The source of a signal's value: an event type and a ClickHouse expression over that event's `request_signals` row."""

    event_type: EventType
    value: str


def _max_score(column: str) -> str:
    """Return the expression of the largest risk score in a scanner score Map, 0.0 for a row without scanners."""
    return f"if(empty({column}), 0.0, arrayMax(mapValues({column})))"


_SIGNAL_QUERIES: dict[Signal, _SignalQuery] = {
    Signal.PROMPT_CHARS: _SignalQuery(EventType.ACCEPTED, "prompt_chars"),
    Signal.OUTPUT_CHARS: _SignalQuery(EventType.DELIVERED, "output_chars"),
    Signal.SCREENING_SCORE: _SignalQuery(EventType.SCREENED, _max_score("screening_scores")),
    Signal.MODERATION_SCORE: _SignalQuery(EventType.MODERATED, _max_score("moderation_scores")),
    Signal.REFUSAL_RATE: _SignalQuery(EventType.MODERATED, "toUInt8(ifNull(refusal, false))"),
    # NOTE: a prompt blocked at screening never gets a variant, so this rate
    # counts only outputs that moderation blocked.
    Signal.BLOCK_RATE: _SignalQuery(EventType.MODERATED, "toUInt8(moderation_verdict = 'blocked')"),
}

# The signals the store can supply now. Feedback and conversion have no
# events yet, so the detector gets no windows for them.
# NOTE: prompt embeddings are stored only with SLUICE_TELEMETRY_EMBED_PROMPTS,
# and this source does not read them yet. The domain classifier needs raw
# vectors of 384 floats each, so a read would have to sample them down to a
# few hundred per window to keep the store API's replies small.
SOURCED_SIGNALS: tuple[Signal, ...] = tuple(_SIGNAL_QUERIES)

# One row per request of the tenant and variant with a `{event_type}` event
# in the time range, with the signal's value and the event's time. The
# `{...}` fields are filled from fixed strings of this module, and every
# value is bound on the server.
_PER_REQUEST_VALUES = """
SELECT request_id, any({value}) AS value, min(ts) AS observed_at
FROM request_signals
WHERE tenant = {{tenant:String}}
  AND type = '{event_type}'{time_range}
  AND request_id IN (
      SELECT request_id
      FROM request_signals
      WHERE tenant = {{tenant:String}}
        AND type = 'request.assigned'{assignment_range}
        AND variant = {{variant:String}}
  )
GROUP BY request_id
"""

# The first samples in time. Ties on the time break by request id, so the
# same stored events always give the same reference.
_FIRST_SAMPLES_SQL = """
SELECT value, observed_at
FROM ({per_request})
ORDER BY observed_at, request_id
LIMIT {{max_rows:UInt32}}
"""

# A sample of at most `max_rows` requests. Ordering by a hash of the request
# id picks the same requests on every read of the same range, and request
# ids are random, so the sample is uniform over the range.
_SAMPLED_SQL = """
SELECT value
FROM ({per_request})
ORDER BY cityHash64(request_id)
LIMIT {{max_rows:UInt32}}
"""

# The variants that received requests in the time range, per tenant.
_VARIANTS_SQL = """
SELECT DISTINCT tenant, variant
FROM request_signals
WHERE type = 'request.assigned'{time_range}
ORDER BY tenant, variant
"""

_AFTER_START = " AND ts > {start:DateTime64(6, 'UTC')}"
_UNTIL_END = " AND ts <= {end:DateTime64(6, 'UTC')}"
_ASSIGNED_AFTER = " AND ts >= {assigned_after:DateTime64(6, 'UTC')}"
_ASSIGNED_UNTIL = " AND ts <= {assigned_until:DateTime64(6, 'UTC')}"


class SignalSource:
    """Reads signal values from the store API. Raises the store client's `StoreError` subclasses."""

    def __init__(self, store: StoreClient, *, max_samples_per_read: int) -> None:
        self._store = store
        self._max_samples_per_read = max_samples_per_read

    async def variants(self, start: datetime | None, end: datetime) -> list[tuple[str, str]]:
        """Return the (tenant, variant) pairs that had a request assigned in (start, end]. A `start` of None leaves the range open."""
        time_range = (_AFTER_START if start is not None else "") + _UNTIL_END
        parameters = _time_parameters(start, end)
        rows = await self._store.query_all(_VARIANTS_SQL.format(time_range=time_range), parameters)
        return [(str(tenant), str(variant)) for tenant, variant in rows]

    async def reference(
        self, tenant: str, variant: str, signal: Signal, *, sample_count: int, end: datetime
    ) -> SignalWindow | None:
        """Return the first `sample_count` samples of (tenant, variant, signal) up to `end` as a window, or None while there are fewer.

        The window runs from the first sample's time to the last one's.
        """
        per_request, parameters = _per_request_query(tenant, variant, signal, None, end)
        sql = _FIRST_SAMPLES_SQL.format(per_request=per_request)
        rows = await self._store.query_all(sql, {**parameters, "max_rows": sample_count}, page_size=MAX_PAGE_SIZE)
        if len(rows) < sample_count:
            return None
        values = np.array([value for value, _observed_at in rows])
        return SignalWindow(signal, _parse_time(rows[0][1]), _parse_time(rows[-1][1]), values)

    async def sample(self, tenant: str, variant: str, signal: Signal, start: datetime, end: datetime) -> np.ndarray:
        """Return the values of (tenant, variant, signal) in (start, end], sampled down to `max_samples_per_read`."""
        per_request, parameters = _per_request_query(tenant, variant, signal, start, end)
        sql = _SAMPLED_SQL.format(per_request=per_request)
        parameters["max_rows"] = self._max_samples_per_read
        rows = await self._store.query_all(sql, parameters, page_size=MAX_PAGE_SIZE)
        return np.array([value for (value,) in rows])


def _per_request_query(
    tenant: str, variant: str, signal: Signal, start: datetime | None, end: datetime
) -> tuple[str, dict[str, Any]]:
    query = _SIGNAL_QUERIES[signal]
    parameters: dict[str, Any] = {"tenant": tenant, "variant": variant, **_time_parameters(start, end)}
    parameters["assigned_until"] = _parameter_time(end + ASSIGNMENT_SEARCH_MARGIN)
    assignment_range = _ASSIGNED_UNTIL
    if start is not None:
        parameters["assigned_after"] = _parameter_time(start - ASSIGNMENT_SEARCH_MARGIN)
        assignment_range = _ASSIGNED_AFTER + assignment_range
    sql = _PER_REQUEST_VALUES.format(
        value=query.value,
        event_type=query.event_type.value,
        time_range=(_AFTER_START if start is not None else "") + _UNTIL_END,
        assignment_range=assignment_range,
    )
    return sql, parameters


def _time_parameters(start: datetime | None, end: datetime) -> dict[str, str]:
    parameters = {"end": _parameter_time(end)}
    if start is not None:
        parameters["start"] = _parameter_time(start)
    return parameters


def _parameter_time(moment: datetime) -> str:
    # ClickHouse parses a DateTime64 parameter from this text, read in the type's time zone (UTC).
    utc = moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
    return utc.strftime(_TIMESTAMP_FORMAT)


def _parse_time(value: str) -> datetime:
    # The store API sends datetimes as ISO 8601 strings in UTC, with or without an offset.
    moment = datetime.fromisoformat(value)
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment

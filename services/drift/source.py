"""Reading each signal's per-request values for a (tenant, variant, time range) from `request_signals` and `feedback`, through the store API.

Every SQL string of the drift service's reads lives here. Telemetry
computes each value when it stores the event (see
schemas/clickhouse/003_request_signals.sql), from the text that crossed the
bus, so an output's length is right whatever the policy's storage mode
keeps of its text. A value comes from the row of one event type, or from
the request's rows in `feedback` for the feedback signals, and the
request's variant from its `request.assigned` row. Each request gives one
value per signal, even when a copy of its row escaped deduplication,
because the queries group by request id.

A signal's time is the time of the event it comes from (the prompt's when
the request was accepted, the output's when it was delivered, the feedback's
when it was received), so a request whose output arrives after a window
closed counts in the next window.

Prompt embeddings (384 float32 values each) are not read one per request.
ClickHouse counts and sums them, and only a bounded sample of rows crosses
the bus (see `embedding_summary`), in pages that fit NATS's default 1 MiB
message size. Requests stored without an embedding (telemetry's
SLUICE_TELEMETRY_EMBED_PROMPTS off) are skipped, so while it is off no
reference fills and the signal is never compared.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from services.drift.embedding_summary import EmbeddingSummary
from services.drift.windows import SignalWindow
from shared.drift_signals import Signal, SignalKind
from shared.events import EventType, FeedbackKind
from shared.store_client import MAX_PAGE_SIZE, StoreClient

# A request's signal events lie within its deadline of its assignment (300 s
# by default, `SLUICE_REQUEST_TIMEOUT_S`). The variant lookup searches
# `request.assigned` events this far before and after the time range, which
# covers deadlines of up to an hour.
ASSIGNMENT_SEARCH_MARGIN = timedelta(hours=1)
# Feedback comes up to the attribution window after its request (30 days by
# default, `SLUICE_FEEDBACK_ATTRIBUTION_WINDOW_S`), so the feedback signals
# look for the request's assignment this far before the time range.
FEEDBACK_ASSIGNMENT_LOOKBACK = timedelta(days=30)

_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


@dataclass(frozen=True)
class _SignalQuery:
    """The source of a signal's value: a table, the filter that picks a request's rows in it, and a ClickHouse expression over them.

    Most signals read one event type's rows of `request_signals`. The
    feedback signals read the `feedback` table, one row per feedback, and
    look for the request's assignment as far back as feedback may come.
    `aggregate` reduces a request's rows to one value.
    """

    value: str
    row_filter: str
    table: str = "request_signals"
    aggregate: str = "any"
    assignment_lookback: timedelta = ASSIGNMENT_SEARCH_MARGIN


def _event_rows(event_type: EventType, condition: str = "") -> str:
    """Return the filter of `request_signals` rows of `event_type`; `condition` is an extra ` AND ...` filter on them."""
    return f"type = '{event_type.value}'{condition}"


def _feedback_rows(kind: FeedbackKind) -> str:
    return f"kind = '{kind.value}'"


def _max_score(column: str) -> str:
    """Return the expression of the largest risk score in a scanner score Map, 0.0 for a row without scanners."""
    return f"if(empty({column}), 0.0, arrayMax(mapValues({column})))"


_SIGNAL_QUERIES: dict[Signal, _SignalQuery] = {
    Signal.PROMPT_CHARS: _SignalQuery("prompt_chars", _event_rows(EventType.ACCEPTED)),
    Signal.OUTPUT_CHARS: _SignalQuery("output_chars", _event_rows(EventType.DELIVERED)),
    Signal.SCREENING_SCORE: _SignalQuery(_max_score("screening_scores"), _event_rows(EventType.SCREENED)),
    Signal.MODERATION_SCORE: _SignalQuery(_max_score("moderation_scores"), _event_rows(EventType.MODERATED)),
    Signal.REFUSAL_RATE: _SignalQuery("toUInt8(ifNull(refusal, false))", _event_rows(EventType.MODERATED)),
    # NOTE: a prompt blocked at screening never gets a variant, so this rate
    # counts only outputs that moderation blocked.
    Signal.BLOCK_RATE: _SignalQuery("toUInt8(moderation_verdict = 'blocked')", _event_rows(EventType.MODERATED)),
    # The share of thumbs feedback that is a thumbs up, and of conversion
    # feedback that reports a conversion, each at the feedback's time. A
    # request with several pieces of feedback of the kind counts once, with
    # its highest value.
    Signal.FEEDBACK_RATE: _SignalQuery(
        "toUInt8(value > 0)",
        _feedback_rows(FeedbackKind.THUMBS),
        table="feedback",
        aggregate="max",
        assignment_lookback=FEEDBACK_ASSIGNMENT_LOOKBACK,
    ),
    Signal.CONVERSION_RATE: _SignalQuery(
        "toUInt8(value > 0)",
        _feedback_rows(FeedbackKind.CONVERSION),
        table="feedback",
        aggregate="max",
        assignment_lookback=FEEDBACK_ASSIGNMENT_LOOKBACK,
    ),
    Signal.PROMPT_EMBEDDING: _SignalQuery(
        "prompt_embedding", _event_rows(EventType.ACCEPTED, " AND notEmpty(prompt_embedding)")
    ),
}

# Every signal has a source.
SOURCED_SIGNALS: tuple[Signal, ...] = tuple(_SIGNAL_QUERIES)

# One row per request of the tenant and variant with a row of the signal in
# the time range, with the signal's value and the row's time. The
# `{...}` fields are filled from fixed strings of this module, and every
# value is bound on the server.
_PER_REQUEST_VALUES = """
SELECT request_id, {aggregate}({value}) AS value, min(ts) AS observed_at
FROM {table}
WHERE tenant = {{tenant:String}}
  AND {row_filter}{time_range}
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

# The first `reference_rows` requests in time, with their request ids, for
# the embedding reference. Ties on the time break by request id, as in
# `_FIRST_SAMPLES_SQL`.
_FIRST_REQUESTS_SQL = """
SELECT request_id, value, observed_at
FROM ({per_request})
ORDER BY observed_at, request_id
LIMIT {{reference_rows:UInt32}}
"""

# The number of embeddings in `{rows}`, their sum for the centroid, and their
# first and last times. sumForEach adds the arrays element by element, in
# Float64.
_EMBEDDING_TOTALS_SQL = """
SELECT count() AS requests, sumForEach(value) AS vector_sum, min(observed_at), max(observed_at)
FROM ({rows})
"""

# An embedding as base64 text of its float32 values. hex() writes a Float32's
# four IEEE 754 bytes in little-endian order on any host (ClickHouse's
# src/Functions/FunctionsBinaryRepresentation.cpp). For 384 values that is
# 2,048 exact characters, against about 8,000 for a JSON array of decimals.
_ENCODED_EMBEDDING = "base64Encode(unhex(arrayStringConcat(arrayMap(x -> hex(x), value))))"

# The bottom-k sample of `{rows}` (see `embedding_summary`): the requests
# with the smallest hashes of their ids, the same ones on every read.
_EMBEDDING_SAMPLE_SQL = """
SELECT cityHash64(request_id) AS sample_key, {embedding} AS embedding
FROM ({rows})
ORDER BY sample_key, request_id
LIMIT {{sample_limit:UInt32}}
"""

# Rows per store API page of an embedding sample. A row of 384 values is
# about 2,070 bytes of JSON (a key of up to 20 digits and 2,048 characters of
# base64), so 400 rows make about 830 KB, under NATS's default max_payload of
# 1 MiB. The store would cut a larger page short to fit, but each page reruns
# the query, and a cut page makes it read rows that it then drops.
EMBEDDING_PAGE_SIZE = 400

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
    """Reads signal values from the store API. Raises the store client's `StoreError` subclasses.

    `max_samples_per_read` caps the values of one read of a numeric or rate
    signal, and `embedding_samples_per_window` the embedding rows of one read
    of the prompt embedding signal.
    """

    def __init__(self, store: StoreClient, *, max_samples_per_read: int, embedding_samples_per_window: int) -> None:
        self._store = store
        self._max_samples_per_read = max_samples_per_read
        self._embedding_samples_per_window = embedding_samples_per_window

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

        The window runs from the first sample's time to the last one's. An
        embedding reference contains a sample of its rows (see `embedding_summary`).
        """
        per_request, parameters = _per_request_query(tenant, variant, signal, None, end)
        if signal.kind is SignalKind.EMBEDDING:
            return await self._embedding_reference(signal, per_request, parameters, sample_count)
        sql = _FIRST_SAMPLES_SQL.format(per_request=per_request)
        rows = await self._store.query_all(sql, {**parameters, "max_rows": sample_count}, page_size=MAX_PAGE_SIZE)
        if len(rows) < sample_count:
            return None
        values = np.array([value for value, _observed_at in rows])
        return SignalWindow(signal, _parse_time(rows[0][1]), _parse_time(rows[-1][1]), values)

    async def sample(
        self, tenant: str, variant: str, signal: Signal, start: datetime, end: datetime
    ) -> np.ndarray | EmbeddingSummary:
        """Return the values of (tenant, variant, signal) in (start, end], sampled down to `max_samples_per_read`.

        For the embedding signal, return the summary of every embedding in
        the range, with a sample of at most `embedding_samples_per_window` rows.
        """
        per_request, parameters = _per_request_query(tenant, variant, signal, start, end)
        if signal.kind is SignalKind.EMBEDDING:
            totals = await self._embedding_totals(per_request, parameters)
            return await self._embedding_summary(per_request, parameters, totals)
        sql = _SAMPLED_SQL.format(per_request=per_request)
        parameters["max_rows"] = self._max_samples_per_read
        rows = await self._store.query_all(sql, parameters, page_size=MAX_PAGE_SIZE)
        return np.array([value for (value,) in rows])

    async def _embedding_reference(
        self, signal: Signal, per_request: str, parameters: dict[str, Any], sample_count: int
    ) -> SignalWindow | None:
        first_requests = _FIRST_REQUESTS_SQL.format(per_request=per_request)
        parameters = {**parameters, "reference_rows": sample_count}
        totals = await self._embedding_totals(first_requests, parameters)
        if totals.count < sample_count:
            return None
        summary = await self._embedding_summary(first_requests, parameters, totals)
        return SignalWindow.of_embeddings(signal, _parse_time(totals.first), _parse_time(totals.last), summary)

    async def _embedding_totals(self, rows_sql: str, parameters: dict[str, Any]) -> _EmbeddingTotals:
        sql = _EMBEDDING_TOTALS_SQL.format(rows=rows_sql)
        [[count, vector_sum, first, last]] = await self._store.query_all(sql, parameters)
        return _EmbeddingTotals(int(count), vector_sum, first, last)

    async def _embedding_summary(
        self, rows_sql: str, parameters: dict[str, Any], totals: _EmbeddingTotals
    ) -> EmbeddingSummary:
        """Read the sample of `rows_sql` and return it with `totals`, which were read before it."""
        limit = self._embedding_samples_per_window
        if totals.count == 0:
            return EmbeddingSummary.empty(limit)
        sql = _EMBEDDING_SAMPLE_SQL.format(rows=rows_sql, embedding=_ENCODED_EMBEDDING)
        rows = await self._store.query_all(sql, {**parameters, "sample_limit": limit}, page_size=EMBEDDING_PAGE_SIZE)
        keys = [int(key) for key, _embedding in rows]
        embeddings = _decoded_embeddings([embedding for _key, embedding in rows])
        # NOTE: the totals and the sample are two queries, so a row stored
        # between them makes them disagree. Only a row stored later than the
        # runner's settle delay can. When the sample then exceeds the count,
        # EmbeddingSummary raises ValueError and the runner reads the range again.
        return EmbeddingSummary(totals.count, np.asarray(totals.vector_sum, dtype=np.float64), keys, embeddings, limit)


@dataclass(frozen=True)
class _EmbeddingTotals:
    count: int
    vector_sum: list[float]
    # The store API's ISO 8601 times of the first and last embedding.
    first: str
    last: str


def _decoded_embeddings(encoded: list[str]) -> np.ndarray:
    """Decode `_ENCODED_EMBEDDING` texts into rows of shape (n, dimensions). Raises ValueError when their lengths differ."""
    rows = [np.frombuffer(base64.b64decode(text, validate=True), dtype="<f4") for text in encoded]
    widths = sorted({len(row) for row in rows})
    if len(widths) > 1:
        raise ValueError(
            f"prompt embeddings of {widths} dimensions in one read. Embed every prompt of a tenant with the same encoder"
        )
    return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)


def _per_request_query(
    tenant: str, variant: str, signal: Signal, start: datetime | None, end: datetime
) -> tuple[str, dict[str, Any]]:
    query = _SIGNAL_QUERIES[signal]
    parameters: dict[str, Any] = {"tenant": tenant, "variant": variant, **_time_parameters(start, end)}
    parameters["assigned_until"] = _parameter_time(end + ASSIGNMENT_SEARCH_MARGIN)
    assignment_range = _ASSIGNED_UNTIL
    if start is not None:
        parameters["assigned_after"] = _parameter_time(start - query.assignment_lookback)
        assignment_range = _ASSIGNED_AFTER + assignment_range
    sql = _PER_REQUEST_VALUES.format(
        value=query.value,
        aggregate=query.aggregate,
        table=query.table,
        row_filter=query.row_filter,
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

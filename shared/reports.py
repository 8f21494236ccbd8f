"""Reports computed in ClickHouse through the store API.

`summary_report` classifies each request of a tenant by its events and
measures latency from their timestamps. It reads `events FINAL` and reduces
each request to one row first, so a copy of an event that escaped
deduplication changes no count.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from shared.store_client import StoreClient
from shared.summary import LatencyPercentiles, TrafficSummary

# Timestamps come from the clocks of several hosts, so an event of a request
# accepted at `since` may carry a slightly earlier time. Events up to this
# margin before `since` are still read, so such a request keeps all of them.
CLOCK_SKEW_MARGIN = timedelta(minutes=5)

# The scanner reported for a blocked request whose event names none.
UNSPECIFIED_SCANNER = "unspecified"
# The error code reported for a failed request whose event names none.
UNSPECIFIED_ERROR_CODE = "unspecified"

_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f"

# One row per request accepted in the window, with the time of each step and
# the verdicts and finish reason its events carry. `{window}` and
# `{accepted_window}` are filled with fixed conditions on the parameters
# `since` and `until`. Every value is bound on the server.
_PER_REQUEST = """
per_request AS (
    SELECT
        request_id,
        minIfOrNull(ts, type = 'request.accepted') AS accepted_at,
        minIfOrNull(ts, type = 'generation.first_token') AS first_token_at,
        minIfOrNull(ts, type = 'request.screened' AND verdict = 'blocked') AS input_blocked_at,
        anyIf(blocked_by, type = 'request.screened' AND verdict = 'blocked') AS input_blocked_by,
        countIf(type = 'output.moderated' AND verdict = 'blocked') > 0 AS output_blocked,
        anyIf(blocked_by, type = 'output.moderated' AND verdict = 'blocked') AS output_blocked_by,
        minIfOrNull(ts, type = 'output.delivered') AS delivered_at,
        anyIf(finish_reason, type = 'output.delivered') AS delivered_finish_reason,
        countIf(type = 'request.failed') > 0 AS failed,
        anyIf(error_code, type = 'request.failed') AS failed_error_code,
        countIf(type = 'request.expired') > 0 AS expired,
        countIf(type = 'request.cancelled') > 0 AS cancelled
    FROM (
        SELECT
            request_id,
            type,
            ts,
            JSONExtractString(payload, 'verdict') AS verdict,
            JSONExtractString(payload, 'blocked_by') AS blocked_by,
            JSONExtractString(payload, 'finish_reason') AS finish_reason,
            JSONExtractString(payload, 'error_code') AS error_code
        FROM events FINAL
        WHERE tenant = {{tenant:String}}{window}
    )
    GROUP BY request_id
    HAVING accepted_at IS NOT NULL{accepted_window}
)
"""

# Each request lands in exactly one outcome, checked in this order. `cause`
# is the blocking scanner of a blocked request and the error code of a failed one.
_OUTCOMES_SQL = """
WITH {per_request}
SELECT outcome, cause, count() AS requests
FROM (
    SELECT
        input_blocked_at IS NOT NULL OR output_blocked OR delivered_finish_reason = 'moderation' AS blocked,
        multiIf(
            blocked, 'blocked',
            delivered_at IS NOT NULL, 'completed',
            failed, 'failed',
            expired, 'expired',
            cancelled, 'cancelled',
            'in_progress'
        ) AS outcome,
        multiIf(
            blocked AND input_blocked_at IS NOT NULL, input_blocked_by,
            blocked, output_blocked_by,
            outcome = 'failed', failed_error_code,
            ''
        ) AS cause
    FROM per_request
)
GROUP BY outcome, cause
ORDER BY outcome, cause
"""

# Percentiles interpolate linearly between samples, as numpy.percentile does
# by default, so the demo's client-side figures compare directly.
_LATENCY_SQL = """
WITH {per_request}
SELECT
    count(ttft_ms) AS ttft_samples,
    quantilesExactInclusive(0.5, 0.95)(ttft_ms) AS ttft_percentiles,
    count(total_ms) AS total_samples,
    quantilesExactInclusive(0.5, 0.95)(total_ms) AS total_percentiles
FROM (
    SELECT
        dateDiff('microsecond', accepted_at, first_token_at) / 1000 AS ttft_ms,
        dateDiff('microsecond', accepted_at, coalesce(delivered_at, input_blocked_at)) / 1000 AS total_ms
    FROM per_request
)
"""


async def summary_report(
    store: StoreClient,
    tenant: str,
    since: datetime | None = None,
    until: datetime | None = None,
) -> TrafficSummary:
    """Return the traffic summary of the requests `tenant` had accepted in [since, until).

    `None` leaves that end of the window open; naive datetimes are taken as
    UTC. An empty window gives an all-zero summary. Raises the store client's
    `StoreError` subclasses.
    """
    per_request, parameters = _per_request_query(tenant, since, until)
    outcome_rows = await store.query_all(_OUTCOMES_SQL.format(per_request=per_request), parameters)
    latency_rows = await store.query_all(_LATENCY_SQL.format(per_request=per_request), parameters)
    summary = _summary_from_outcomes(outcome_rows)
    summary.ttft, summary.total_latency = _latencies(latency_rows)
    return summary


def _per_request_query(tenant: str, since: datetime | None, until: datetime | None) -> tuple[str, dict[str, Any]]:
    parameters: dict[str, Any] = {"tenant": tenant}
    window = accepted_window = ""
    if since is not None:
        parameters["since"] = _parameter_time(since)
        parameters["since_with_margin"] = _parameter_time(since - CLOCK_SKEW_MARGIN)
        window = " AND ts >= {since_with_margin:DateTime64(6, 'UTC')}"
        accepted_window += " AND accepted_at >= {since:DateTime64(6, 'UTC')}"
    if until is not None:
        parameters["until"] = _parameter_time(until)
        accepted_window += " AND accepted_at < {until:DateTime64(6, 'UTC')}"
    per_request = _PER_REQUEST.format(window=window, accepted_window=accepted_window)
    return per_request, parameters


def _parameter_time(moment: datetime) -> str:
    # ClickHouse parses a DateTime64 parameter from this text, read in the type's time zone (UTC).
    utc = moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
    return utc.strftime(_TIMESTAMP_FORMAT)


def _summary_from_outcomes(rows: list[list[Any]]) -> TrafficSummary:
    summary = TrafficSummary()
    for outcome, cause, count in rows:
        summary.requests += count
        if outcome == "blocked":
            name = cause or UNSPECIFIED_SCANNER
            summary.blocked_by[name] = summary.blocked_by.get(name, 0) + count
            continue
        if outcome == "failed":
            code = cause or UNSPECIFIED_ERROR_CODE
            summary.failed_by[code] = summary.failed_by.get(code, 0) + count
        # The outcomes other than blocked are named as TrafficSummary's count fields.
        setattr(summary, outcome, getattr(summary, outcome) + count)
    return summary


def _latencies(rows: list[list[Any]]) -> tuple[LatencyPercentiles, LatencyPercentiles]:
    [[ttft_samples, ttft_percentiles, total_samples, total_percentiles]] = rows
    return _percentiles(ttft_samples, ttft_percentiles), _percentiles(total_samples, total_percentiles)


def _percentiles(samples: int, values: list[float | None]) -> LatencyPercentiles:
    if samples == 0:
        return LatencyPercentiles()
    p50_ms, p95_ms = values
    return LatencyPercentiles(p50_ms=p50_ms, p95_ms=p95_ms, samples=samples)

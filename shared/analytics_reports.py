"""Canned analytics reports over `request_signals`: latency, throughput, cost, safety and errors, and feedback.

The feedback report reads the `feedback` table and takes each request's
variant from its `request.assigned` row in `request_signals`.

Each report reads `request_signals FINAL` with `LIMIT 1 BY event_id`, so
every event counts once, even a copy that a stage republished in a later
hour (see schemas/clickhouse/003_request_signals.sql). The per-minute
rollups would read fewer rows, but they count such copies twice and their
quantiles come from reservoir samples. Rows are grouped into time buckets by
their own `ts`, so a request whose events fall into two buckets counts in
each bucket for its events there.

Percentiles are `quantilesExactInclusive`: exact, with linear interpolation
between the sorted samples, as numpy.percentile computes by default.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, Field

from shared.prices import PriceTable
from shared.report_filters import ReportFilters, check_filters
from shared.store_client import StoreClient

# The rows of generation attempts, whose backend token counts usage and cost are based on.
_GENERATION_TYPES = "('generation.completed', 'request.failed', 'request.cancelled')"
_BUCKET = "toStartOfInterval(ts, INTERVAL {bucket_s:UInt32} SECOND) AS bucket_start"
_VARIANT = " AND ({variant:String} = '' OR variant = {variant:String})"


def _utc(value: str) -> datetime:
    """Parse a bucket start as the store API sends it (ISO 8601 in UTC, with or without the offset)."""
    moment = datetime.fromisoformat(value)
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def _signals(columns: str, types: str, filters: ReportFilters, variant_condition: str = _VARIANT) -> str:
    """Return a subquery of one row per event of `types` in the filters' tenant and range."""
    return f"""(
        SELECT event_id, ts, type, {columns}
        FROM request_signals FINAL
        WHERE tenant = {{tenant:String}} AND type IN {types}{filters.time_condition()}{variant_condition}
        LIMIT 1 BY event_id
    )"""


class Percentiles(BaseModel):
    """p50, p95 and p99 in milliseconds, of `samples` values, or `None` when there are no samples."""

    samples: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None


def _percentiles(samples: int, values: list[float | None]) -> Percentiles:
    if samples == 0:
        return Percentiles()
    p50_ms, p95_ms, p99_ms = values
    return Percentiles(samples=samples, p50_ms=p50_ms, p95_ms=p95_ms, p99_ms=p99_ms)


class ReportBase(BaseModel):
    """The filters a report was computed with; `bucket_s` is the length of each time bucket in seconds."""

    tenant: str
    since: datetime | None
    until: datetime | None
    variant: str | None
    bucket: str
    bucket_s: int


def _base(filters: ReportFilters) -> dict[str, Any]:
    return {**filters.model_dump(), "bucket_s": filters.bucket_s}


# --- latency -------------------------------------------------------------------------------------


class LatencyRow(BaseModel):
    """Latency of the completed generations of one model and variant in one bucket."""

    bucket_start: datetime
    model: str
    variant: str
    completed: int
    ttft: Percentiles
    total: Percentiles
    queue: Percentiles


class LatencyReport(ReportBase):
    """TTFT, total and queue time of completed generations (generation.completed rows)."""

    rows: list[LatencyRow] = Field(default_factory=list)


_LATENCY_SQL = """
SELECT
    {bucket}, model, variant, count() AS completed,
    count(ttft_ms), quantilesExactInclusive(0.5, 0.95, 0.99)(ttft_ms),
    count(total_ms), quantilesExactInclusive(0.5, 0.95, 0.99)(total_ms),
    count(queue_ms), quantilesExactInclusive(0.5, 0.95, 0.99)(queue_ms)
FROM {signals}
GROUP BY bucket_start, model, variant
ORDER BY bucket_start, model, variant
"""


async def latency_report(store: StoreClient, filters: ReportFilters) -> LatencyReport:
    """Return p50, p95 and p99 of ttft_ms, total_ms and queue_ms per bucket, model and variant."""
    check_filters(filters)
    signals = _signals("model, variant, ttft_ms, total_ms, queue_ms", "('generation.completed')", filters)
    sql = _LATENCY_SQL.format(bucket=_BUCKET, signals=signals)
    rows = []
    for bucket_start, model, variant, completed, *latencies in await store.query_all(sql, filters.parameters()):
        ttft_samples, ttft, total_samples, total, queue_samples, queue = latencies
        rows.append(
            LatencyRow(
                bucket_start=_utc(bucket_start),
                model=model,
                variant=variant,
                completed=completed,
                ttft=_percentiles(ttft_samples, ttft),
                total=_percentiles(total_samples, total),
                queue=_percentiles(queue_samples, queue),
            )
        )
    return LatencyReport(**_base(filters), rows=rows)


# --- throughput and cost -------------------------------------------------------------------------


class ThroughputRow(BaseModel):
    """Completed requests and tokens of one model and variant in one bucket.

    Tokens are the backends' counts of every generation attempt, completed,
    failed or cancelled. Rates divide by the seconds of the bucket inside
    the report's range.
    """

    bucket_start: datetime
    model: str
    variant: str
    completed: int
    prompt_tokens: int
    output_tokens: int
    requests_per_s: float
    tokens_per_s: float


class ThroughputReport(ReportBase):
    rows: list[ThroughputRow] = Field(default_factory=list)


_TOKENS_SQL = """
SELECT
    {bucket}, model, variant,
    countIf(type = 'generation.completed') AS completed,
    sum(toUInt64(ifNull(prompt_tokens, 0))) AS prompt_tokens,
    sum(toUInt64(ifNull(output_tokens, 0))) AS output_tokens
FROM {signals}
GROUP BY bucket_start, model, variant
ORDER BY bucket_start, model, variant
"""


async def _token_rows(store: StoreClient, filters: ReportFilters) -> list[list[Any]]:
    check_filters(filters)
    signals = _signals("model, variant, prompt_tokens, output_tokens", _GENERATION_TYPES, filters)
    return await store.query_all(_TOKENS_SQL.format(bucket=_BUCKET, signals=signals), filters.parameters())


async def throughput_report(store: StoreClient, filters: ReportFilters) -> ThroughputReport:
    """Return completed requests, prompt and output tokens, and their rates per bucket, model and variant."""
    rows = []
    for bucket_start, model, variant, completed, prompt_tokens, output_tokens in await _token_rows(store, filters):
        seconds = filters.bucket_seconds_in_range(_utc(bucket_start))
        rows.append(
            ThroughputRow(
                bucket_start=_utc(bucket_start),
                model=model,
                variant=variant,
                completed=completed,
                prompt_tokens=prompt_tokens,
                output_tokens=output_tokens,
                requests_per_s=completed / seconds if seconds else 0.0,
                tokens_per_s=(prompt_tokens + output_tokens) / seconds if seconds else 0.0,
            )
        )
    return ThroughputReport(**_base(filters), rows=rows)


class CostRow(BaseModel):
    """Token usage and its price for one model and variant in one bucket, in US dollars."""

    bucket_start: datetime
    model: str
    variant: str
    prompt_tokens: int
    output_tokens: int
    cost_usd: float


class CostReport(ReportBase):
    """Token usage priced with the per-model table in shared/config/prices.yaml; `total_usd` sums every row."""

    rows: list[CostRow] = Field(default_factory=list)
    total_usd: float = 0.0


async def cost_report(store: StoreClient, filters: ReportFilters, prices: PriceTable) -> CostReport:
    """Return the prompt and output tokens per bucket, model and variant, priced with `prices`."""
    rows = []
    for bucket_start, model, variant, _completed, prompt_tokens, output_tokens in await _token_rows(store, filters):
        cost_usd = prices.price_of(model).cost_usd(prompt_tokens, output_tokens)
        rows.append(
            CostRow(
                bucket_start=_utc(bucket_start),
                model=model,
                variant=variant,
                prompt_tokens=prompt_tokens,
                output_tokens=output_tokens,
                cost_usd=cost_usd,
            )
        )
    return CostReport(**_base(filters), rows=rows, total_usd=sum(row.cost_usd for row in rows))


# --- safety --------------------------------------------------------------------------------------


class ScannerRow(BaseModel):
    """How often one scanner of a stage ran, blocked, flagged and redacted in one bucket, and its risk scores (0 to 1).

    `blocks` counts the rows where this scanner was the first to block.
    `flags` counts the rows where it found the text invalid and its policy
    entry only records that, and `redactions` the rows where it found the
    text valid but replaced parts of it, such as personal data.
    """

    bucket_start: datetime
    stage: str
    scanner: str
    runs: int
    blocks: int
    flags: int
    redactions: int
    mean_risk_score: float
    max_risk_score: float


class StageRow(BaseModel):
    """Screened prompts or moderated outputs in one bucket: checked, blocked, flagged, redacted, and read as refusals.

    `flagged` and `redacted` count the texts where at least one scanner
    flagged or redacted. Only moderation rows have refusals.
    """

    bucket_start: datetime
    stage: str
    checked: int
    blocked: int
    flagged: int
    redacted: int
    refusals: int


class SafetyReport(ReportBase):
    """Screening (request.screened) and moderation (output.moderated) actions by scanner.

    With a variant, screening rows count when their request was assigned to
    that variant, so prompts blocked at screening, which were never
    assigned, count only in a report over every variant.
    """

    stages: list[StageRow] = Field(default_factory=list)
    scanners: list[ScannerRow] = Field(default_factory=list)


_SAFETY_TYPES = "('request.screened', 'output.moderated')"
_SAFETY_COLUMNS = (
    "request_id, variant, screening_scores, screening_verdict, screening_blocked_by, "
    "screening_actions, moderation_scores, moderation_verdict, moderation_blocked_by, moderation_actions, refusal"
)
# Screening rows have variant ''. They count for a variant when request.assigned gave their request that variant.
_SAFETY_VARIANT = """ AND ({variant:String} = ''
            OR variant = {variant:String}
            OR (type = 'request.screened' AND request_id IN (
                SELECT request_id FROM request_signals
                WHERE tenant = {tenant:String} AND type = 'request.assigned' AND variant = {variant:String}
            )))"""
_STAGE = "if(type = 'request.screened', 'screening', 'moderation') AS stage"
# The row's scanner -> action map, in which scanners that took no action are missing (read as '').
_ACTIONS = "if(type = 'request.screened', screening_actions, moderation_actions)"

_STAGES_SQL = """
SELECT
    {bucket}, {stage},
    count() AS checked,
    countIf(if(type = 'request.screened', screening_verdict, moderation_verdict) = 'blocked') AS blocked,
    countIf(has(mapValues({actions}), 'flag')) AS flagged,
    countIf(has(mapValues({actions}), 'redact')) AS redacted,
    countIf(ifNull(refusal, false)) AS refusals
FROM {signals}
GROUP BY bucket_start, stage
ORDER BY bucket_start, stage
"""

_SCANNERS_SQL = """
SELECT
    {bucket}, {stage},
    scanner_score.1 AS scanner,
    count() AS runs,
    countIf(scanner_score.1 = if(type = 'request.screened', screening_blocked_by, moderation_blocked_by)) AS blocks,
    countIf({actions}[scanner_score.1] = 'flag') AS flags,
    countIf({actions}[scanner_score.1] = 'redact') AS redactions,
    avg(scanner_score.2) AS mean_risk_score,
    max(scanner_score.2) AS max_risk_score
FROM {signals}
ARRAY JOIN
    arrayZip(
        mapKeys(if(type = 'request.screened', screening_scores, moderation_scores)),
        mapValues(if(type = 'request.screened', screening_scores, moderation_scores))
    ) AS scanner_score
GROUP BY bucket_start, stage, scanner
ORDER BY bucket_start, stage, scanner
"""


async def safety_report(store: StoreClient, filters: ReportFilters) -> SafetyReport:
    """Return per bucket the prompts screened and outputs moderated, and each scanner's runs and actions.

    NOTE: events written before scanner results carried their action count
    no flags and no redactions. Moderation counts a redaction only where
    the final check of the whole output found the personal data still in
    the text. Output that moderation redacted while it streamed, and every
    output `Secrets` entry with action `redact`, count none.
    """
    check_filters(filters)
    signals = _signals(_SAFETY_COLUMNS, _SAFETY_TYPES, filters, _SAFETY_VARIANT)
    parameters = filters.parameters()
    stages_sql = _STAGES_SQL.format(bucket=_BUCKET, stage=_STAGE, actions=_ACTIONS, signals=signals)
    scanners_sql = _SCANNERS_SQL.format(bucket=_BUCKET, stage=_STAGE, actions=_ACTIONS, signals=signals)
    stage_rows = await store.query_all(stages_sql, parameters)
    scanner_rows = await store.query_all(scanners_sql, parameters)
    stages = [
        StageRow(
            bucket_start=_utc(start), stage=stage, checked=checked, blocked=blocked, flagged=flagged,
            redacted=redacted, refusals=refusals,
        )
        for start, stage, checked, blocked, flagged, redacted, refusals in stage_rows
    ]
    scanners = [
        ScannerRow(
            bucket_start=_utc(start), stage=stage, scanner=scanner, runs=runs, blocks=blocks, flags=flags,
            redactions=redactions, mean_risk_score=mean_score, max_risk_score=max_score,
        )
        for start, stage, scanner, runs, blocks, flags, redactions, mean_score, max_score in scanner_rows
    ]
    return SafetyReport(**_base(filters), stages=stages, scanners=scanners)


# --- errors --------------------------------------------------------------------------------------


class ErrorRateRow(BaseModel):
    """Requests, failures and cancellations in one bucket, and their rates (failed or cancelled per request)."""

    bucket_start: datetime
    requests: int
    failed: int
    cancelled: int
    error_rate: float
    cancellation_rate: float


class ErrorCauseRow(BaseModel):
    """The count of one error code (`outcome` 'failed') or cancel reason (`outcome` 'cancelled') in one bucket."""

    bucket_start: datetime
    outcome: str
    cause: str
    count: int


class ErrorsReport(ReportBase):
    """Error and cancellation rates per bucket, with counts by error code and cancel reason.

    Requests are request.accepted rows, or with a variant the
    request.assigned rows of that variant, so failures before assignment
    count only in a report over every variant.
    """

    rows: list[ErrorRateRow] = Field(default_factory=list)
    causes: list[ErrorCauseRow] = Field(default_factory=list)


_ERROR_TYPES = "('request.accepted', 'request.assigned', 'request.failed', 'request.cancelled')"
_ERROR_COLUMNS = "variant, error_code, cancel_reason"

_RATES_SQL = """
SELECT
    {bucket},
    countIf(type = if({{variant:String}} = '', 'request.accepted', 'request.assigned')) AS requests,
    countIf(type = 'request.failed') AS failed,
    countIf(type = 'request.cancelled') AS cancelled
FROM {signals}
GROUP BY bucket_start
ORDER BY bucket_start
"""

_CAUSES_SQL = """
SELECT
    {bucket},
    if(type = 'request.failed', 'failed', 'cancelled') AS outcome,
    if(type = 'request.failed', error_code, cancel_reason) AS cause,
    count() AS events
FROM {signals}
WHERE type IN ('request.failed', 'request.cancelled')
GROUP BY bucket_start, outcome, cause
ORDER BY bucket_start, outcome, cause
"""


async def errors_report(store: StoreClient, filters: ReportFilters) -> ErrorsReport:
    """Return the error and cancellation rates per bucket, and the counts of each error code and cancel reason."""
    check_filters(filters)
    signals = _signals(_ERROR_COLUMNS, _ERROR_TYPES, filters)
    parameters = filters.parameters()
    rate_rows = await store.query_all(_RATES_SQL.format(bucket=_BUCKET, signals=signals), parameters)
    cause_rows = await store.query_all(_CAUSES_SQL.format(bucket=_BUCKET, signals=signals), parameters)
    rows = [
        ErrorRateRow(
            bucket_start=_utc(start),
            requests=requests,
            failed=failed,
            cancelled=cancelled,
            error_rate=failed / requests if requests else 0.0,
            cancellation_rate=cancelled / requests if requests else 0.0,
        )
        for start, requests, failed, cancelled in rate_rows
    ]
    causes = [
        ErrorCauseRow(bucket_start=_utc(start), outcome=outcome, cause=cause, count=count)
        for start, outcome, cause, count in cause_rows
    ]
    return ErrorsReport(**_base(filters), rows=rows, causes=causes)


# --- feedback ------------------------------------------------------------------------------------


class FeedbackRow(BaseModel):
    """Feedback received in one bucket on the requests of one variant, by kind.

    `variant` is '' for requests that were never assigned, such as prompts
    blocked at screening. A mean or rate is None when the bucket has no
    feedback of its kind. `thumbs_up_rate` and `conversion_rate` are the
    share of thumbs or conversion feedback with value 1, not a share of all
    requests.
    """

    bucket_start: datetime
    variant: str
    ratings: int
    mean_rating: float | None
    thumbs: int
    thumbs_up_rate: float | None
    conversions: int
    conversion_rate: float | None
    value_count: int
    value_sum: float


class FeedbackReport(ReportBase):
    """Feedback (the `feedback` table) per bucket of its arrival time and variant of the rated request."""

    rows: list[FeedbackRow] = Field(default_factory=list)


# One row per event id, as in the other reports, then the rated request's
# variant. The join reads only the assigned rows of requests rated in range.
_FEEDBACK_SQL = """
SELECT
    {bucket}, variant,
    countIf(kind = 'rating') AS ratings, avgIf(value, kind = 'rating') AS mean_rating,
    countIf(kind = 'thumbs') AS thumbs, avgIf(value, kind = 'thumbs') AS thumbs_up_rate,
    countIf(kind = 'conversion') AS conversions, avgIf(value, kind = 'conversion') AS conversion_rate,
    countIf(kind = 'value') AS value_count, sumIf(value, kind = 'value') AS value_sum
FROM (
    SELECT ts, request_id, kind, value
    FROM feedback FINAL
    WHERE tenant = {{tenant:String}}{time_condition}
    LIMIT 1 BY event_id
) AS rated
LEFT JOIN (
    SELECT request_id, any(variant) AS variant
    FROM request_signals
    WHERE tenant = {{tenant:String}} AND type = 'request.assigned' AND request_id IN (
        SELECT request_id FROM feedback WHERE tenant = {{tenant:String}}{time_condition}
    )
    GROUP BY request_id
) AS assigned ON rated.request_id = assigned.request_id
WHERE {{variant:String}} = '' OR variant = {{variant:String}}
GROUP BY bucket_start, variant
ORDER BY bucket_start, variant
"""


async def feedback_report(store: StoreClient, filters: ReportFilters) -> FeedbackReport:
    """Return per bucket and variant the count of each feedback kind, the mean rating, and the thumbs-up and conversion rates."""
    check_filters(filters)
    sql = _FEEDBACK_SQL.format(bucket=_BUCKET, time_condition=filters.time_condition())
    rows = [
        FeedbackRow(
            bucket_start=_utc(start), variant=variant,
            ratings=ratings, mean_rating=mean_rating,
            thumbs=thumbs, thumbs_up_rate=thumbs_up_rate,
            conversions=conversions, conversion_rate=conversion_rate,
            value_count=value_count, value_sum=value_sum,
        )
        for (
            start, variant, ratings, mean_rating, thumbs, thumbs_up_rate, conversions, conversion_rate, value_count, value_sum
        ) in await store.query_all(sql, filters.parameters())
    ]
    return FeedbackReport(**_base(filters), rows=rows)

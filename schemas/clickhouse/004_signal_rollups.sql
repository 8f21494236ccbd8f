-- Per-minute rollups of `request_signals`, kept by materialized views, so
-- that reports over days read a row per minute and group instead of a row
-- per event.
--
-- A materialized view aggregates each block inserted into request_signals
-- and inserts the result into its target table. AggregatingMergeTree then
-- merges the rows of one sorting key in the background, so a query must
-- still aggregate: sum() the counts and quantilesMerge(0.5, 0.95, 0.99) the
-- quantile states, grouped by the key columns it keeps. For example:
--
--   SELECT variant, model, sum(completed),
--          quantilesMerge(0.5, 0.95, 0.99)(ttft_ms_quantiles)
--   FROM request_signals_per_minute
--   WHERE tenant = {tenant:String} AND minute >= {since:DateTime}
--   GROUP BY variant, model
--
-- The rollups count every signal row inserted, so a copy that reached
-- request_signals despite the writer's duplicate skip (see
-- 003_request_signals.sql) is counted twice here. Exact counts come from
-- request_signals FINAL.
--
-- A view reads only the rows inserted after it exists. This migration runs
-- before the telemetry service inserts its first signal row, so these views
-- miss nothing, but a view added by a later migration needs a backfill
-- (INSERT INTO its table SELECT ... FROM request_signals).

-- Per tenant, variant and model: counts of each outcome, token sums for
-- usage and cost, and latency quantiles. Rows before assignment
-- (request.accepted, request.screened, and requests that failed before
-- assignment) have variant and model ''.
--
-- Quantile states are `quantiles` (reservoir sampling): exact, with linear
-- interpolation, while a state contains at most 8,192 values, and a uniform
-- sample of that many beyond. A t-digest state is smaller, but on a
-- minute's few dozen values its quantiles are off by whole values
-- (p50 33 where the exact median is 37.1 over ten latencies, chDB 4.4).
CREATE TABLE IF NOT EXISTS request_signals_per_minute
(
    tenant LowCardinality(String),
    minute DateTime('UTC'),
    variant LowCardinality(String),
    model LowCardinality(String),
    accepted SimpleAggregateFunction(sum, UInt64),
    -- request.screened rows whose verdict is 'blocked'.
    input_blocked SimpleAggregateFunction(sum, UInt64),
    assigned SimpleAggregateFunction(sum, UInt64),
    completed SimpleAggregateFunction(sum, UInt64),
    -- output.moderated rows whose verdict is 'blocked', and those read as a refusal.
    output_blocked SimpleAggregateFunction(sum, UInt64),
    refusals SimpleAggregateFunction(sum, UInt64),
    delivered SimpleAggregateFunction(sum, UInt64),
    failed SimpleAggregateFunction(sum, UInt64),
    cancelled SimpleAggregateFunction(sum, UInt64),
    expired SimpleAggregateFunction(sum, UInt64),
    -- The backend's token counts of generation rows (completed, failed,
    -- cancelled), so tokens of cut-off generations count too.
    prompt_tokens SimpleAggregateFunction(sum, UInt64),
    output_tokens SimpleAggregateFunction(sum, UInt64),
    -- Of generation.completed rows, in milliseconds.
    queue_ms_quantiles AggregateFunction(quantiles(0.5, 0.95, 0.99), Float32),
    ttft_ms_quantiles AggregateFunction(quantiles(0.5, 0.95, 0.99), Float32),
    total_ms_quantiles AggregateFunction(quantiles(0.5, 0.95, 0.99), Float32)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (tenant, minute, variant, model);

CREATE MATERIALIZED VIEW IF NOT EXISTS request_signals_per_minute_mv TO request_signals_per_minute AS
SELECT
    tenant,
    toStartOfMinute(ts) AS minute,
    variant,
    model,
    countIf(type = 'request.accepted') AS accepted,
    countIf(type = 'request.screened' AND screening_verdict = 'blocked') AS input_blocked,
    countIf(type = 'request.assigned') AS assigned,
    countIf(type = 'generation.completed') AS completed,
    countIf(type = 'output.moderated' AND moderation_verdict = 'blocked') AS output_blocked,
    countIf(type = 'output.moderated' AND ifNull(refusal, false)) AS refusals,
    countIf(type = 'output.delivered') AS delivered,
    countIf(type = 'request.failed') AS failed,
    countIf(type = 'request.cancelled') AS cancelled,
    countIf(type = 'request.expired') AS expired,
    sumIf(toUInt64(ifNull(prompt_tokens, 0)), type IN ('generation.completed', 'request.failed', 'request.cancelled')) AS prompt_tokens,
    sumIf(toUInt64(ifNull(output_tokens, 0)), type IN ('generation.completed', 'request.failed', 'request.cancelled')) AS output_tokens,
    quantilesStateIf(0.5, 0.95, 0.99)(assumeNotNull(queue_ms), type = 'generation.completed' AND queue_ms IS NOT NULL) AS queue_ms_quantiles,
    quantilesStateIf(0.5, 0.95, 0.99)(assumeNotNull(ttft_ms), type = 'generation.completed' AND ttft_ms IS NOT NULL) AS ttft_ms_quantiles,
    quantilesStateIf(0.5, 0.95, 0.99)(assumeNotNull(total_ms), type = 'generation.completed' AND total_ms IS NOT NULL) AS total_ms_quantiles
FROM request_signals
GROUP BY tenant, minute, variant, model;

-- Per tenant, stage ('screening' or 'moderation') and scanner: how often
-- the scanner ran, how often it was the scanner that blocked, and the
-- quantiles of its risk scores, for the actions-by-scanner report and
-- score drift. Moderation rows carry the request's variant, screening
-- rows variant ''.
CREATE TABLE IF NOT EXISTS scanner_signals_per_minute
(
    tenant LowCardinality(String),
    minute DateTime('UTC'),
    stage LowCardinality(String),
    scanner LowCardinality(String),
    variant LowCardinality(String),
    evaluations SimpleAggregateFunction(sum, UInt64),
    blocks SimpleAggregateFunction(sum, UInt64),
    risk_score_quantiles AggregateFunction(quantiles(0.5, 0.95, 0.99), Float32)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (tenant, minute, stage, scanner, variant);

CREATE MATERIALIZED VIEW IF NOT EXISTS scanner_signals_per_minute_mv TO scanner_signals_per_minute AS
SELECT
    tenant,
    toStartOfMinute(ts) AS minute,
    if(type = 'request.screened', 'screening', 'moderation') AS stage,
    scanner_score.1 AS scanner,
    variant,
    count() AS evaluations,
    countIf(scanner_score.1 = if(type = 'request.screened', screening_blocked_by, moderation_blocked_by)) AS blocks,
    quantilesState(0.5, 0.95, 0.99)(scanner_score.2) AS risk_score_quantiles
FROM request_signals
ARRAY JOIN
    arrayZip(
        mapKeys(if(type = 'request.screened', screening_scores, moderation_scores)),
        mapValues(if(type = 'request.screened', screening_scores, moderation_scores))
    ) AS scanner_score
WHERE type IN ('request.screened', 'output.moderated')
GROUP BY tenant, minute, stage, scanner, variant;

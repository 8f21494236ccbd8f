-- One row per drift comparison: a signal of a model variant, its current
-- window against its frozen reference, from one `drift.evaluated` event.
--
-- The drift service publishes the events and telemetry stores them in
-- `events` like every other event. The materialized view below copies each
-- one into this table at insert time, so telemetry needs no code for it.
-- Rows stored in `events` before this migration are not copied.
--
-- ReplacingMergeTree for the same reason as `events`: a batch that
-- telemetry inserts twice (a lost ack) fires the view twice, and the copies
-- share the sorting key, so they collapse during merges and under FINAL.
CREATE TABLE IF NOT EXISTS drift_reports
(
    evaluated_at DateTime64(6, 'UTC'),
    tenant LowCardinality(String),
    variant LowCardinality(String),
    signal LowCardinality(String),
    -- "fired" when every alarm statistic crossed its threshold, else "quiet".
    outcome LowCardinality(String),
    -- Whether an alert is active for (variant, signal) after this window.
    alert_active Bool,
    -- The alarm statistic that an alert names, with its value and threshold.
    statistic LowCardinality(String),
    value Float64,
    threshold Nullable(Float64),
    reference_start DateTime64(6, 'UTC'),
    reference_end DateTime64(6, 'UTC'),
    reference_samples UInt32,
    current_start DateTime64(6, 'UTC'),
    current_end DateTime64(6, 'UTC'),
    current_samples UInt32,
    -- Every statistic of the comparison as a JSON array of
    -- {name, value, threshold, direction, fired}.
    statistics String,
    -- The Bonferroni-corrected level of each KS and rate test of the evaluation.
    per_test_alpha Float64,
    -- The evaluation's id (the envelope's request_id) and the event's id.
    evaluation_id String,
    event_id String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(evaluated_at)
ORDER BY (tenant, evaluated_at, variant, signal, event_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS drift_reports_from_events TO drift_reports AS
SELECT
    ts AS evaluated_at,
    tenant,
    JSONExtractString(payload, 'variant') AS variant,
    JSONExtractString(payload, 'signal') AS signal,
    JSONExtractString(payload, 'outcome') AS outcome,
    JSONExtractBool(payload, 'alert_active') AS alert_active,
    JSONExtractString(alarm, 'name') AS statistic,
    JSONExtractFloat(alarm, 'value') AS value,
    JSONExtract(alarm, 'threshold', 'Nullable(Float64)') AS threshold,
    parseDateTime64BestEffort(JSONExtractString(payload, 'reference', 'start'), 6, 'UTC') AS reference_start,
    parseDateTime64BestEffort(JSONExtractString(payload, 'reference', 'end'), 6, 'UTC') AS reference_end,
    JSONExtractUInt(payload, 'reference', 'sample_count') AS reference_samples,
    parseDateTime64BestEffort(JSONExtractString(payload, 'current', 'start'), 6, 'UTC') AS current_start,
    parseDateTime64BestEffort(JSONExtractString(payload, 'current', 'end'), 6, 'UTC') AS current_end,
    JSONExtractUInt(payload, 'current', 'sample_count') AS current_samples,
    JSONExtractRaw(payload, 'statistics') AS statistics,
    JSONExtractFloat(payload, 'per_test_alpha') AS per_test_alpha,
    request_id AS evaluation_id,
    event_id
FROM
(
    -- The first statistic of the payload is the alarm statistic.
    SELECT *, JSONExtractArrayRaw(payload, 'statistics')[1] AS alarm
    FROM events
    WHERE type = 'drift.evaluated'
);

-- One row per piece of feedback on a request (a rating, thumbs, conversion
-- or value), from one `feedback.received` event.
--
-- The ingress publishes the events (POST /v1/feedback and the feedback
-- subject) and telemetry stores them in `events` like every other event.
-- The materialized view below copies each one into this table at insert
-- time, so telemetry needs no code for it. Rows stored in `events` before
-- this migration are not copied.
--
-- ReplacingMergeTree for the same reason as `events`: a batch that
-- telemetry inserts twice (a lost ack) fires the view twice, and the copies
-- share the sorting key, so they collapse during merges and under FINAL.
-- The event id is derived from the tenant, the request id and the
-- idempotency key, so a repeated submission has the same event id too.
--
-- Exactly once: "SELECT ... FROM feedback FINAL" returns one row per event
-- id, unless a copy was stored on a later day than the original (another
-- sorting key). That happens only when a client repeats a submission after
-- its idempotency key expired (SLUICE_FEEDBACK_IDEMPOTENCY_TTL_S, a day by
-- default), so queries that must be exact also keep one row per event_id.
--
-- The sorting key leads with tenant and day because feedback is read per
-- tenant and time range.
CREATE TABLE IF NOT EXISTS feedback
(
    ts DateTime64(6, 'UTC'),
    tenant LowCardinality(String),
    -- The rated request's id.
    request_id String,
    -- rating (1 to 5), thumbs (0 or 1), conversion (0 or 1) or value (any finite number).
    kind LowCardinality(String),
    value Float64,
    metadata Map(String, String),
    idempotency_key String,
    -- The channel that carried the feedback: http (POST /v1/feedback) or nats (the feedback subject).
    channel LowCardinality(String),
    event_id String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant, toDate(ts), request_id, event_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS feedback_from_events TO feedback AS
SELECT
    ts,
    tenant,
    request_id,
    JSONExtractString(payload, 'kind') AS kind,
    JSONExtractFloat(payload, 'value') AS value,
    JSONExtract(payload, 'metadata', 'Map(String, String)') AS metadata,
    JSONExtractString(payload, 'idempotency_key') AS idempotency_key,
    JSONExtractString(payload, 'channel') AS channel,
    event_id
FROM events
WHERE type = 'feedback.received';

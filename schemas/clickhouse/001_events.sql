-- Every event of the EVENTS stream, one row per event id.
--
-- ReplacingMergeTree because JetStream delivers at least once. A batch whose
-- ack was lost is delivered and inserted again, and a stage that crashed after
-- publishing publishes the same event id again with a new ts. Rows with the
-- same sorting key (tenant, day of ts, request_id, type, event_id) collapse
-- into one during background merges, and FINAL merges them at read time.
--
-- Exactly once: "SELECT ... FROM events FINAL" returns one row per event id,
-- unless a copy was republished on a later day than the original (another
-- sorting key, perhaps another partition). Queries that must be exact across
-- midnight also group by event_id. The telemetry service skips event ids that
-- are already stored before it inserts, so few copies reach the table at all.
--
-- The sorting key leads with tenant and day because every report is scoped
-- to one tenant and a time range.
CREATE TABLE IF NOT EXISTS events
(
    event_id String,
    type LowCardinality(String),
    schema_version UInt16,
    request_id String,
    tenant LowCardinality(String),
    ts DateTime64(6, 'UTC'),
    deadline Nullable(DateTime64(6, 'UTC')),
    trace Map(String, String),
    -- The envelope payload as JSON. Only request.accepted keeps the forwarded
    -- "request" field, so each prompt is stored once.
    payload String,
    inserted_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant, toDate(ts), request_id, type, event_id);

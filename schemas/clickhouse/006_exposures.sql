-- One row per exposure: a unit seen in an experiment, from one
-- `experiment.exposed` event.
--
-- The assignment service publishes an exposure for a unit's first request in
-- an experiment per session (SLUICE_ASSIGNMENT_EXPOSURE_SESSION_S, 30
-- minutes without a request by default), and telemetry stores it in
-- `events` like every other event. The materialized view below copies each
-- one into this table at insert time, so telemetry needs no code for it.
-- Rows stored in `events` before this migration are not copied.
--
-- ReplacingMergeTree for the same reason as `events`: a batch that
-- telemetry inserts twice (a lost ack) fires the view twice, and a
-- redelivered `request.screened` republishes the same event id with a new
-- ts. The sorting key leaves ts out, so the copies share it and collapse
-- during merges and under FINAL, unless a copy lands in the next month's
-- partition. Queries that must be exact also keep one row per event_id.
--
-- Experiment analysis counts units per arm, so the sorting key leads with
-- tenant and experiment_key. Rows with source 'forced' are units that a
-- forced variant put in the arm, not randomized ones, so a comparison of
-- arms must leave them out.
CREATE TABLE IF NOT EXISTS exposures
(
    ts DateTime64(6, 'UTC'),
    tenant LowCardinality(String),
    experiment_key LowCardinality(String),
    variant_key LowCardinality(String),
    -- The hashed attribute, user_id or request_id, and its value: the unit.
    hash_attribute LowCardinality(String),
    unit String,
    -- GrowthBook's hash of the unit in [0, 1), or NULL when the variant came
    -- from the sticky store or was forced.
    hash_value Nullable(Float64),
    -- The experiment's bucket version when the unit was exposed.
    bucket_version UInt32,
    -- The source of the variant: hash, sticky or forced.
    source LowCardinality(String),
    -- The request that exposed the unit, and the event's id.
    request_id String,
    event_id String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant, experiment_key, variant_key, unit, event_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS exposures_from_events TO exposures AS
SELECT
    ts,
    tenant,
    JSONExtractString(payload, 'experiment_key') AS experiment_key,
    JSONExtractString(payload, 'variant_key') AS variant_key,
    JSONExtractString(payload, 'hash_attribute') AS hash_attribute,
    JSONExtractString(payload, 'unit') AS unit,
    JSONExtract(payload, 'hash_value', 'Nullable(Float64)') AS hash_value,
    JSONExtractUInt(payload, 'bucket_version') AS bucket_version,
    JSONExtractString(payload, 'source') AS source,
    request_id,
    event_id
FROM events
WHERE type = 'experiment.exposed';

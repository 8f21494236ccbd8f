-- One row per evaluation of a model version on a held-out set, from one
-- `model.evaluated` event.
--
-- `sluice model eval` publishes the events and telemetry stores them in
-- `events` like every other event. The materialized view below copies each
-- one into this table at insert time, so telemetry needs no code for it.
-- Rows stored in `events` before this migration are not copied.
--
-- ReplacingMergeTree for the same reason as `events`: a batch that
-- telemetry inserts twice (a lost ack) fires the view twice, and the copies
-- share the sorting key, so they collapse during merges and under FINAL.
--
-- Runs are compared per model version over time, so the sorting key leads
-- with tenant and model_version.
CREATE TABLE IF NOT EXISTS model_evals
(
    ts DateTime64(6, 'UTC'),
    tenant LowCardinality(String),
    model_version String,
    -- The base model's folder name or hub id, the adapter folder's name
    -- (NULL for the base alone) and the quantization scheme (NULL for full
    -- precision).
    base String,
    adapter Nullable(String),
    quantization Nullable(String),
    -- The held-out file's name without ".jsonl" and the SHA-256 of its bytes.
    dataset LowCardinality(String),
    dataset_sha256 String,
    examples UInt32,
    -- exp of the mean negative log-likelihood per completion token.
    perplexity Float64,
    completion_tokens UInt64,
    -- The task metric's name and the fraction of examples that met it.
    metric LowCardinality(String),
    accuracy Float64,
    -- Fractions of the generated outputs that a blocking output scanner
    -- stopped, that only a flagging scanner marked, and per scanner that it
    -- found invalid.
    blocked_rate Float64,
    flagged_rate Float64,
    scanner_rates Map(String, Float64),
    max_new_tokens UInt32,
    generated_tokens UInt64,
    -- Wall-clock time of one greedy generation, in milliseconds.
    latency_p50_ms Float64,
    latency_p95_ms Float64,
    tokens_per_s Float64,
    -- The evaluation run's id (the envelope's request_id) and the event's id.
    evaluation_id String,
    event_id String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant, model_version, ts, event_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS model_evals_from_events TO model_evals AS
SELECT
    ts,
    tenant,
    JSONExtractString(payload, 'model_version') AS model_version,
    JSONExtractString(payload, 'base') AS base,
    JSONExtract(payload, 'adapter', 'Nullable(String)') AS adapter,
    JSONExtract(payload, 'quantization', 'Nullable(String)') AS quantization,
    JSONExtractString(payload, 'dataset') AS dataset,
    JSONExtractString(payload, 'dataset_sha256') AS dataset_sha256,
    JSONExtractUInt(payload, 'examples') AS examples,
    JSONExtractFloat(payload, 'perplexity') AS perplexity,
    JSONExtractUInt(payload, 'completion_tokens') AS completion_tokens,
    JSONExtractString(payload, 'metric') AS metric,
    JSONExtractFloat(payload, 'accuracy') AS accuracy,
    JSONExtractFloat(payload, 'blocked_rate') AS blocked_rate,
    JSONExtractFloat(payload, 'flagged_rate') AS flagged_rate,
    JSONExtract(payload, 'scanner_rates', 'Map(String, Float64)') AS scanner_rates,
    JSONExtractUInt(payload, 'max_new_tokens') AS max_new_tokens,
    JSONExtractUInt(payload, 'generated_tokens') AS generated_tokens,
    JSONExtractFloat(payload, 'latency', 'p50_ms') AS latency_p50_ms,
    JSONExtractFloat(payload, 'latency', 'p95_ms') AS latency_p95_ms,
    JSONExtractFloat(payload, 'tokens_per_s') AS tokens_per_s,
    request_id AS evaluation_id,
    event_id
FROM events
WHERE type = 'model.evaluated';

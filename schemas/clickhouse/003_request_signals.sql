-- Per-request signals, computed by the telemetry service when it stores an
-- event, so that reports and drift detection are plain SQL over typed
-- columns instead of JSON extraction from `events.payload`.
--
-- One row per event that carries a signal, with the event's id, type and
-- ts. These are request.accepted (prompt length, metadata, prompt text and
-- embedding), request.screened (screening scores and verdict) and
-- request.assigned (experiment, variant, model, backend). Then come
-- generation.completed (tokens and latency components), output.moderated
-- (moderation scores, verdict and refusal flag), output.delivered (output
-- length and text), and request.failed, request.cancelled and
-- request.expired. Other events get no row. A column that does not apply to a row's type is NULL, or '' for
-- the LowCardinality(String) ones, or an empty Map or Array. One table
-- rather than one per stage, because every query selects rows by `type`
-- anyway, and a join of several stages of one request is a GROUP BY
-- request_id here rather than a join of several tables.
--
-- The variant is known from request.assigned on. The writer copies the
-- experiment, variant, model and backend of request.assigned onto the later
-- rows of the same request when it still remembers the assignment, so a
-- per-variant query over those rows needs no join. Rows before assignment
-- (accepted, screened) and rows of a request that never reached assignment
-- have variant ''. Per-variant prompt signals join the accepted row with
-- the assigned row of the same request_id.
--
-- ReplacingMergeTree, as `events`: the telemetry service inserts a signal
-- row only for an event id whose signal row is not stored yet (it looks up
-- redelivered ids in this table), and rows with the same sorting key
-- collapse under FINAL.
--
-- Exactly once: "SELECT ... FROM request_signals FINAL" returns one row per
-- event id, unless a stage republished the event in a later hour than the
-- original (another sorting key). Queries that must be exact across hours
-- also group by event_id.
--
-- The sorting key leads with tenant and hour because every report and drift
-- window is scoped to one tenant and a time range. Hours rather than days
-- (as in `events`) let a query of a few minutes or hours read only those
-- hours' granules.
CREATE TABLE IF NOT EXISTS request_signals
(
    event_id String,
    type LowCardinality(String),
    request_id String,
    tenant LowCardinality(String),
    ts DateTime64(6, 'UTC'),

    -- From request.assigned, and copied onto the later rows of the request.
    experiment LowCardinality(String) DEFAULT '',
    variant LowCardinality(String) DEFAULT '',
    model LowCardinality(String) DEFAULT '',
    backend LowCardinality(String) DEFAULT '',
    -- The endpoint URL that served a generation (completed, failed, cancelled).
    endpoint LowCardinality(String) DEFAULT '',
    -- request.accepted: the request's free `metadata` attributes.
    attributes Map(String, String),

    -- request.accepted: characters of all message contents, and their
    -- tokens in tiktoken's cl100k_base encoding. One tokenizer for every
    -- model, so prompt lengths compare across variants and over time.
    -- Generation rows (completed, failed, cancelled): the backend's own
    -- count of prompt tokens, which usage and cost are based on.
    prompt_chars Nullable(UInt32),
    prompt_tokens Nullable(UInt32),
    -- generation.completed: the generated text. output.delivered: the text
    -- that clients received. Tokens are the backend's count, on failed and
    -- cancelled rows the tokens generated before the end.
    output_chars Nullable(UInt32),
    output_tokens Nullable(UInt32),

    -- request.screened: risk score per scanner (0.0 no risk to 1.0), the
    -- verdict ('passed' or 'blocked') and the first scanner that blocked.
    screening_scores Map(LowCardinality(String), Float32),
    screening_verdict LowCardinality(String) DEFAULT '',
    screening_blocked_by LowCardinality(String) DEFAULT '',
    -- output.moderated: the same for the output scanners, and whether a
    -- refusal scanner read the whole output as a refusal.
    moderation_scores Map(LowCardinality(String), Float32),
    moderation_verdict LowCardinality(String) DEFAULT '',
    moderation_blocked_by LowCardinality(String) DEFAULT '',
    refusal Nullable(Bool),

    -- Generation rows, in milliseconds, from the generation stats. queue_ms
    -- is the wait in the endpoint pool's queue after request.assigned, and
    -- ttft_ms the time from the start of generation to the first token.
    -- total_ms (completed only) is the time from request.assigned to the
    -- last token: queue_ms plus the generation time. NULL where the stats
    -- lack a value.
    queue_ms Nullable(Float32),
    ttft_ms Nullable(Float32),
    total_ms Nullable(Float32),
    inter_token_p50_ms Nullable(Float32),
    inter_token_p99_ms Nullable(Float32),
    -- The backend's finish reason (completed, delivered, and failed or
    -- cancelled generations), request.failed's error code,
    -- request.cancelled's reason, and the stage that failed, cancelled or
    -- found the request expired.
    finish_reason LowCardinality(String) DEFAULT '',
    error_code LowCardinality(String) DEFAULT '',
    cancel_reason LowCardinality(String) DEFAULT '',
    stage LowCardinality(String) DEFAULT '',

    -- Texts, stored as the tenant's storage mode in the policy sets (raw,
    -- redacted, one SHA-256 per message for the prompt when hashed, or '').
    -- The prompt is request.accepted's message contents, one per line, and
    -- the output output.delivered's text. A column TTL empties both 30 days
    -- after ts, in the merge that finds them expired, while the numbers
    -- stay. The TTL is schema, so only a later migration changes it
    -- (ALTER TABLE request_signals MODIFY COLUMN prompt_text String TTL ...):
    -- a setting could not shorten it for rows that are already stored.
    prompt_text String TTL toDateTime(ts) + INTERVAL 30 DAY,
    output_text String TTL toDateTime(ts) + INTERVAL 30 DAY,

    -- request.accepted, when SLUICE_TELEMETRY_EMBED_PROMPTS is on:
    -- all-MiniLM-L6-v2's embedding of the prompt (the mean of its window
    -- embeddings, L2-normalised, 384 values). Empty otherwise. Centroids and
    -- other aggregates are computed here, e.g. avgForEach(prompt_embedding).
    prompt_embedding Array(Float32),

    inserted_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant, toStartOfHour(ts), request_id, type, event_id);

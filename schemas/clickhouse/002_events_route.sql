-- The HTTP route that accepted the request, such as "/v1/chat/completions",
-- which selects the policy's route overrides. NULL for events written before
-- envelopes carried it and for requests that no HTTP route accepted.
ALTER TABLE events ADD COLUMN IF NOT EXISTS route LowCardinality(Nullable(String)) AFTER tenant;

-- What each scanner did on request.screened and output.moderated rows of
-- `request_signals`, from the `action` of each scanner result.
--
-- A map from scanner name to its action: 'block' or 'flag' (the policy
-- entry's action) when the scanner found the text invalid, and 'redact'
-- when it found the text valid but replaced parts of it, such as an email
-- address. 'block' is set for every invalid scanner whose action blocks,
-- while `*_blocked_by` names only the first of them, which stopped the
-- request. Scanners that passed the text unchanged are left out, and so is
-- every scanner of an event written before scanner results carried an
-- action, so such rows have an empty map. Rows of other types have an
-- empty map too.
--
-- The per-minute rollup views of 004_signal_rollups.sql select their
-- columns by name, so they keep working and do not read these columns.
ALTER TABLE request_signals
    ADD COLUMN IF NOT EXISTS screening_actions Map(LowCardinality(String), LowCardinality(String))
    AFTER screening_blocked_by;

ALTER TABLE request_signals
    ADD COLUMN IF NOT EXISTS moderation_actions Map(LowCardinality(String), LowCardinality(String))
    AFTER moderation_blocked_by;

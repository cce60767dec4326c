-- Drift checks and repairs (host/runtime/src/recovery/drift.rs, stream_repair.rs).

-- A drift check replays a projection's live version into a shadow namespace through the rebuild
-- machinery, without a cut-over: its row in projection_rebuilds says so. 'rebuild' rows cut over
-- when caught up; 'drift' rows stop at the live checkpoint (the consistent cut), are compared, and
-- are then dropped or kept ('held') for a repair, which turns them into a 'rebuild'.
ALTER TABLE projection_rebuilds
    ADD COLUMN purpose   TEXT   NOT NULL DEFAULT 'rebuild',
    ADD COLUMN drift_run BIGINT;
-- status: 'running' | 'failed' | 'held' (a drift shadow at its cut: no more batches)

-- A drift run is stored when it starts (outcome 'running', finished_at NULL) and completed when its
-- comparison ends.
ALTER TABLE recovery_runs
    ALTER COLUMN finished_at DROP NOT NULL,
    -- Outbox rows when the drift check started: the measure of its progress.
    ADD COLUMN events_total BIGINT NOT NULL DEFAULT 0,
    -- Per table: [{"table", "compared", "missing", "extra", "different"}].
    ADD COLUMN tables       JSONB  NOT NULL DEFAULT '[]',
    -- The shadow namespace while it is kept for a repair.
    ADD COLUMN shadow       TEXT,
    -- Whether to keep the shadow after the comparison: NULL keeps it only when rows differ.
    ADD COLUMN keep_shadow  BOOLEAN,
    -- When it reached its cut and began comparing.
    ADD COLUMN compare_started_at TIMESTAMPTZ;

-- A one-stream repair replays one stream's events: found by stream, not by scanning the outbox.
CREATE INDEX outbox_by_stream ON outbox (stream_id);

-- Dry runs: a candidate component replayed over the live log into a shadow namespace of its
-- own and compared with the live version (host/runtime/src/dry_run.rs owns this table).
CREATE TABLE projection_dry_runs (
    id               BIGSERIAL   PRIMARY KEY,
    -- The name asked for, then the one the candidate declares (NULL while compiling a
    -- candidate sent without a name).
    projection       TEXT,
    sha256           TEXT        NOT NULL,
    requested_by     TEXT        NOT NULL,
    -- compiling, replaying, comparing, completed, failed or cancelled
    status           TEXT        NOT NULL,
    keep_shadow      BOOLEAN     NOT NULL DEFAULT false,
    -- The shadow namespace (dry_<name>_<id>) while it exists.
    namespace        TEXT,
    -- The live version compared with (NULL: the name was not live).
    live_sha256      TEXT,
    events_total     BIGINT      NOT NULL DEFAULT 0,
    events_read      BIGINT      NOT NULL DEFAULT 0,
    events_handled   BIGINT      NOT NULL DEFAULT 0,
    rows_written     BIGINT      NOT NULL DEFAULT 0,
    position         BIGINT      NOT NULL DEFAULT 0,
    poison_count     BIGINT      NOT NULL DEFAULT 0,
    cancel_requested BOOLEAN     NOT NULL DEFAULT false,
    -- {"declared", "poison", "tables", "sample", "compared_at", "replay_ms", "compare_ms"}
    report           JSONB       NOT NULL DEFAULT '{}',
    error            TEXT,
    started_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The running instance's heartbeat: a run not heard of for a minute is abandoned.
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at      TIMESTAMPTZ
);
-- One running dry run per projection.
CREATE UNIQUE INDEX projection_dry_runs_one_running ON projection_dry_runs (projection)
    WHERE finished_at IS NULL;

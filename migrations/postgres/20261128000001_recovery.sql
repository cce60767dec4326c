-- The recovery service (host/runtime/src/recovery/).

-- Projections found stalled: running, events waiting, checkpoint not moving for RECOVERY_STALL_SECS
-- (owned by recovery/stall.rs). A row exists while the stall lasts; it goes when the checkpoint
-- moves again.
CREATE TABLE projection_stalls (
    projection      TEXT        PRIMARY KEY,
    -- Where the checkpoint stood, and since when, when the stall was found.
    stuck_position  BIGINT      NOT NULL,
    stuck_since     TIMESTAMPTZ NOT NULL,
    detected_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Restarts of the worker since the stall was found, and when the last one happened.
    restarts        INTEGER     NOT NULL DEFAULT 0,
    last_restart_at TIMESTAMPTZ
);

-- Every recovery check that ran, newest last (owned by recovery/runs.rs): the history an operator
-- reads back with `wallex recovery status`.
CREATE TABLE recovery_runs (
    id           BIGSERIAL   PRIMARY KEY,
    kind         TEXT        NOT NULL,
    projection   TEXT,
    requested_by TEXT        NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL,
    finished_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- clean, drift or failed
    outcome      TEXT        NOT NULL,
    checked      BIGINT      NOT NULL DEFAULT 0,
    in_flight    BIGINT      NOT NULL DEFAULT 0,
    missing      BIGINT      NOT NULL DEFAULT 0,
    extra        BIGINT      NOT NULL DEFAULT 0,
    different    BIGINT      NOT NULL DEFAULT 0,
    -- The first differing rows: [{"id", "drift", "columns": [{"column", "write", "read"}]}].
    sample       JSONB       NOT NULL DEFAULT '[]',
    error        TEXT
);
CREATE INDEX recovery_runs_by_kind ON recovery_runs (kind, id DESC);

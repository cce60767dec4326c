-- Fault isolation (see host/src/projection/worker.rs and control.rs): per-deploy limits and the
-- dead-letter table of the `on_poison = skip` policy.

-- Limits and the poison policy given with a deploy (JSON object; absent keys use the host's
-- configuration).
ALTER TABLE projection_deployments ADD COLUMN settings JSONB NOT NULL DEFAULT '{}';

-- Events a projection skipped under `on_poison = skip`: found by bisecting a failing batch,
-- recorded in the same transaction that applies the rest of the batch and moves the checkpoint.
CREATE TABLE projection_dead_letters (
    id              BIGSERIAL   PRIMARY KEY,
    projection      TEXT        NOT NULL,
    global_position BIGINT      NOT NULL,
    event_id        UUID        NOT NULL,
    event_type      TEXT        NOT NULL,
    error           TEXT        NOT NULL,
    attempts        INTEGER     NOT NULL DEFAULT 1,
    recorded_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Set when a replay applied the event.
    resolved_at     TIMESTAMPTZ,
    UNIQUE (projection, event_id)
);
CREATE INDEX projection_dead_letters_open ON projection_dead_letters (projection, global_position)
    WHERE resolved_at IS NULL;

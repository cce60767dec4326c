-- Projection checkpoints and the outbox wake-up signal (see host/src/projection/).

-- One row per projection: the last outbox row it applied, in read order (xact_id, global_position),
-- written in the same transaction as the projection's own table changes.
CREATE TABLE projector_checkpoints (
    projection      TEXT        PRIMARY KEY,
    schema_version  BIGINT      NOT NULL,
    last_xact_id    XID8        NOT NULL DEFAULT '0',
    last_position   BIGINT      NOT NULL DEFAULT 0,
    -- 'running' | 'failing' | 'failed': what the worker holding the lease last reported.
    status          TEXT        NOT NULL DEFAULT 'running',
    last_error      TEXT,
    error_count     INTEGER     NOT NULL DEFAULT 0,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Wake projection workers as soon as outbox rows commit: one notification per writing statement
-- (PostgreSQL delivers it at commit and folds duplicates within a transaction); workers still poll
-- as a fallback.
CREATE FUNCTION wallex_notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('wallex_outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_notify
    AFTER INSERT ON outbox
    FOR EACH STATEMENT
    EXECUTE FUNCTION wallex_notify_outbox();

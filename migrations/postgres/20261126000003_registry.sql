-- The projection registry: deployed component bytes, what each projection runs, blue/green
-- rebuilds and the admin audit trail (see host/src/projection/registry.rs).

-- Component bytes, content-addressed: every host instance runs exactly these bytes.
CREATE TABLE projection_components (
    sha256      TEXT        PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    bytes       BYTEA       NOT NULL,
    size_bytes  INTEGER     NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per projection name: the live version, the one before it (rollback) and the operator's
-- intent. `generation` grows with every change; instances reconcile when it moves.
CREATE TABLE projection_deployments (
    projection      TEXT        PRIMARY KEY,
    sha256          TEXT        NOT NULL REFERENCES projection_components (sha256),
    schema_version  BIGINT      NOT NULL,
    -- The PostgreSQL schema holding the live tables (readers use the stable `projection_<name>`).
    namespace       TEXT        NOT NULL,
    -- 'bundled:<name>' | 'directory:<file>' | 'upload'
    source          TEXT        NOT NULL,
    previous_sha256 TEXT        REFERENCES projection_components (sha256),
    -- 'running' | 'paused' | 'deleted'
    state           TEXT        NOT NULL DEFAULT 'running',
    generation      BIGINT      NOT NULL DEFAULT 1,
    -- Numbers the namespaces of rebuilds (`<namespace base>_b<n>`).
    build_seq       BIGINT      NOT NULL DEFAULT 0,
    deployed_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    deployed_by     TEXT        NOT NULL DEFAULT 'system',
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A blue/green rebuild in progress: a fresh copy of the tables in `namespace`, filled from the
-- start of the outbox under its own checkpoint (`<projection>#rebuild` in projector_checkpoints).
CREATE TABLE projection_rebuilds (
    projection      TEXT        PRIMARY KEY REFERENCES projection_deployments (projection) ON DELETE CASCADE,
    sha256          TEXT        NOT NULL REFERENCES projection_components (sha256),
    schema_version  BIGINT      NOT NULL,
    namespace       TEXT        NOT NULL,
    -- The deployment's source once the rebuild is cut over.
    source          TEXT        NOT NULL,
    -- 'running' | 'failed'
    status          TEXT        NOT NULL DEFAULT 'running',
    last_error      TEXT,
    events_total    BIGINT      NOT NULL DEFAULT 0,
    started_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    requested_by    TEXT        NOT NULL DEFAULT 'system'
);

-- Who did what to which projection, and when.
CREATE TABLE admin_actions (
    id          BIGSERIAL   PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor       TEXT        NOT NULL,
    action      TEXT        NOT NULL,
    projection  TEXT,
    outcome     TEXT        NOT NULL,
    detail      JSONB       NOT NULL DEFAULT '{}'
);
CREATE INDEX admin_actions_by_projection ON admin_actions (projection, at);

-- Checkpoints remember which namespace they describe, and count what they applied (progress).
ALTER TABLE projector_checkpoints
    ADD COLUMN namespace TEXT,
    ADD COLUMN events_applied BIGINT NOT NULL DEFAULT 0;
UPDATE projector_checkpoints
   SET namespace = 'proj_' || replace(projection, '-', '_') || '_v' || schema_version;
ALTER TABLE projector_checkpoints ALTER COLUMN namespace SET NOT NULL;

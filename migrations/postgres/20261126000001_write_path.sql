-- The write model: wallet snapshots, the event store, the transactional outbox and idempotency keys.
-- Every create-wallet request writes all four in one transaction (see ARCHITECTURE.md).

-- Wallet snapshots: the strongly consistent write model behind GET /wallets/{id}.
CREATE TABLE wallets (
    id          TEXT        PRIMARY KEY,
    owner_id    TEXT        NOT NULL,
    balance     NUMERIC     NOT NULL CHECK (balance >= 0),
    currency    CHAR(3)     NOT NULL,
    version     BIGINT      NOT NULL CHECK (version >= 1),
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);

-- The event store. `global_position` is unique and increases with allocation order; transactions may
-- commit out of that order, which is why readers of the outbox never order by position alone.
CREATE SEQUENCE events_global_position_seq AS BIGINT;

CREATE TABLE events (
    global_position BIGINT      PRIMARY KEY DEFAULT nextval('events_global_position_seq'),
    event_id        UUID        NOT NULL UNIQUE,
    stream_id       TEXT        NOT NULL,
    stream_version  BIGINT      NOT NULL CHECK (stream_version >= 1),
    event_type      TEXT        NOT NULL,
    data            JSONB       NOT NULL,
    metadata        JSONB       NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL,
    UNIQUE (stream_id, stream_version)
);
ALTER SEQUENCE events_global_position_seq OWNED BY events.global_position;

-- The transactional outbox: a self-contained, append-only copy of every event for projections, so
-- that an event store outside PostgreSQL (KurrentDB) can feed the same log later.
-- `xact_id` is the writing transaction's id. Readers consume in (xact_id, global_position) order and
-- only below the oldest running transaction (pg_snapshot_xmin), so a row that commits late can never
-- land behind a reader's checkpoint.
CREATE TABLE outbox (
    global_position BIGINT      PRIMARY KEY,
    event_id        UUID        NOT NULL UNIQUE,
    stream_id       TEXT        NOT NULL,
    stream_version  BIGINT      NOT NULL,
    event_type      TEXT        NOT NULL,
    data            JSONB       NOT NULL,
    metadata        JSONB       NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL,
    xact_id         XID8        NOT NULL DEFAULT pg_current_xact_id(),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX outbox_read_order ON outbox (xact_id, global_position);

-- Completed idempotent requests. A request in flight holds a transaction-scoped advisory lock on its
-- key instead of a row, so a crashed owner can never leave a key stuck.
CREATE TABLE idempotency_keys (
    scope            TEXT        NOT NULL,
    idempotency_key  TEXT        NOT NULL,
    fingerprint      BYTEA       NOT NULL,
    status_code      SMALLINT    NOT NULL,
    response_headers JSONB       NOT NULL,
    response_body    BYTEA       NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (scope, idempotency_key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

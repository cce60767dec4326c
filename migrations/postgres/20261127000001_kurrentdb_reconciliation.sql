-- Where the KurrentDB reconciliation pass stands in KurrentDB's $all (EVENT_STORE=kurrentdb only;
-- owned by host/core/src/write_path/reconcile.rs). One row; NULL positions mean "from the start".
CREATE TABLE kurrentdb_reconciliation (
    id                SMALLINT    PRIMARY KEY CHECK (id = 1),
    commit_position   BIGINT,
    prepare_position  BIGINT,
    events_checked    BIGINT      NOT NULL DEFAULT 0,
    wallets_completed BIGINT      NOT NULL DEFAULT 0,
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((commit_position IS NULL) = (prepare_position IS NULL))
);

-- Compiled components (host/runtime/src/artifacts.rs): wasmtime's serialized form of a component,
-- keyed by the component's SHA-256 and the engine's compatibility key, so that a restart or another
-- instance loads a component without compiling it again (one compile per version per cluster).
-- An artifact is native code: only the host writes it, and only for bytes it compiled itself.
CREATE TABLE projection_artifacts (
    sha256      TEXT        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    engine      TEXT        NOT NULL CHECK (engine ~ '^[0-9a-f]{64}$'),
    artifact    BYTEA       NOT NULL,
    size_bytes  BIGINT      NOT NULL,
    -- How long the compile that produced it took.
    compile_ms  BIGINT      NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (sha256, engine)
);

-- Every new version's deploy writes its component's bytes (projection_components, about 110 KiB
-- for a Rust projection, 12-20 MiB for Python or JavaScript) and its compiled artifact
-- (projection_artifacts, about 350 KiB, or 35 MiB). PostgreSQL's default TOAST compression, pglz,
-- took 14 ms of a 350 KiB artifact's 20 ms insert here; lz4 takes well under 1 ms for 9 % more
-- space. Where the server was built without lz4, the values are stored uncompressed instead
-- (EXTERNAL): still out of line, and no compression on the deploy's path.
-- Existing values keep the compression they were written with.
DO $$
BEGIN
    ALTER TABLE projection_artifacts ALTER COLUMN artifact SET COMPRESSION lz4;
    ALTER TABLE projection_components ALTER COLUMN bytes SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    ALTER TABLE projection_artifacts ALTER COLUMN artifact SET STORAGE EXTERNAL;
    ALTER TABLE projection_components ALTER COLUMN bytes SET STORAGE EXTERNAL;
END
$$;

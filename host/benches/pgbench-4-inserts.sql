-- The database's own ceiling for wallet creation: the four inserts of the write path in one
-- transaction, without HTTP, validation or idempotency checks. Run against a migrated database:
--   pgbench -n -h 127.0.0.1 -U postgres -c 64 -j 2 -T 10 -f host/benches/pgbench-4-inserts.sql wallex_bench
\set r random(1, 9223372036854775806)
BEGIN;
INSERT INTO wallets (id, owner_id, balance, currency, version, created_at, updated_at)
  VALUES ('pgb-' || :r, 'owner', 100.00, 'USD', 1, now(), now());
INSERT INTO events (global_position, event_id, stream_id, stream_version, event_type, data, metadata, recorded_at)
  VALUES (:r, gen_random_uuid(), 'wallet-pgb-' || :r, 1, 'WalletCreated', '{"walletId":"x"}', '{"correlationId":"c"}', now());
INSERT INTO outbox (global_position, event_id, stream_id, stream_version, event_type, data, metadata, recorded_at)
  VALUES (:r, gen_random_uuid(), 'wallet-pgb-' || :r, 1, 'WalletCreated', '{"walletId":"x"}', '{"correlationId":"c"}', now());
INSERT INTO idempotency_keys (scope, idempotency_key, fingerprint, status_code, response_headers, response_body, expires_at)
  VALUES ('POST /wallets', 'pgb-' || :r, '\x00', 201, '[]', '\x00', now() + interval '1 day');
END;

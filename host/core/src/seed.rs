//! Benchmark data: many `WalletCreated` events written straight into the event store and the
//! outbox, far faster than through the write path.
//!
//! Why it exists: the projection benchmarks need a log of hundreds of thousands of events in
//! seconds. It lives here because this crate owns `events`, `outbox` and `wallets`; nothing
//! but `wallex bench` calls it.

use std::time::{Duration, Instant};

use sqlx::PgPool;

/// Events inserted by one statement.
pub const SEED_CHUNK: i64 = 10_000;

/// Fills the event store and outbox with `events` `WalletCreated` events (one wallet each, ids
/// `bw<n>`), unless exactly that many are in the outbox already (then it returns `None`).
/// Empties `events`, `outbox` and `wallets` first. Returns how long it took.
pub async fn wallet_created_events(
    pool: &PgPool,
    events: i64,
) -> Result<Option<Duration>, sqlx::Error> {
    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await?;
    if existing == events {
        return Ok(None);
    }
    sqlx::query("TRUNCATE events, outbox, wallets")
        .execute(pool)
        .await?;
    let started = Instant::now();
    let mut from = 1;
    while from <= events {
        let to = (from + SEED_CHUNK - 1).min(events);
        sqlx::query(
            "WITH e AS (
                INSERT INTO events (event_id, stream_id, stream_version, event_type, data, metadata, recorded_at)
                SELECT gen_random_uuid(), 'wallet-bw' || g, 1, 'WalletCreated',
                       jsonb_build_object('walletId', 'bw' || g, 'ownerId', 'owner-' || (g % 1000),
                                          'initialBalance', (g % 10000) || '.25', 'currency', 'USD',
                                          'createdAt', '2026-11-26T12:00:00.000Z'),
                       jsonb_build_object('correlationId', 'bench-' || g, 'causationId', 'bench-' || g),
                       now()
                FROM generate_series($1::bigint, $2::bigint) AS g
                RETURNING global_position, event_id, stream_id, stream_version, event_type, data,
                          metadata, recorded_at)
             INSERT INTO outbox (global_position, event_id, stream_id, stream_version, event_type,
                                 data, metadata, recorded_at)
             SELECT * FROM e",
        )
        .bind(from)
        .bind(to)
        .execute(pool)
        .await?;
        from = to + 1;
    }
    sqlx::query("VACUUM ANALYZE outbox").execute(pool).await?;
    Ok(Some(started.elapsed()))
}

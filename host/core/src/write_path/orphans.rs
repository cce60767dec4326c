//! The KurrentDB reconciliation pass: wallets whose event reached KurrentDB but whose PostgreSQL
//! transaction never committed, completed.
//!
//! Why it exists: with `EVENT_STORE=kurrentdb` a create appends to KurrentDB first and commits
//! PostgreSQL after. A crash or an error between the two leaves an event without its wallet,
//! outbox row and stored answer. A client that retries with the same key completes it itself
//! (the append deduplicates by event id); this pass completes the ones nobody retried, at start-up
//! and every `KURRENTDB_RECONCILE_INTERVAL_SECS`.
//!
//! How: it reads `$all` forward (streams `wallet-…` only) from its checkpoint, in pages of
//! [`PAGE`], stops at the first event younger than `KURRENTDB_RECONCILE_GRACE_SECS` (a request may
//! still be carrying it), and for each `WalletCreated` whose wallet PostgreSQL lacks writes, in one
//! transaction, what the request would have: the wallet from the event, the outbox row (with the
//! event's KurrentDB position), and — when the event names an idempotency key and its record has
//! not expired — the `201` the request would have been answered with, so that the client's late
//! retry is a replay. It takes the key's claim like a request; a key held by a running request
//! stops the pass before that event, to be tried again next time. The checkpoint moves only past
//! events that are settled.
//!
//! One pass runs at a time across instances (a session advisory lock on a connection of its
//! own). On the first start with a database the checkpoint is set to the end of `$all`
//! ([`OrphanCompleter::prepare`], before the server listens): events written before wallex used this
//! database (another deployment's, or another system's) are not this database's to complete.
//! Owns `kurrentdb_reconciliation`.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{wallet_stream, CreateResult, Render, WriteError};
use crate::eventstore::kurrent::{KurrentEventStore, LogEntry, LogPosition};
use crate::eventstore::{EventStoreError, RecordedEvent};
use crate::idempotency::{self, Completion, ScopedKey};
use crate::outbox::{self, OutboxError};
use crate::wallet::WALLET_CREATED;
use crate::wallet_event;
use wallex_telemetry::catalogue::{
    KURRENTDB_RECONCILED_WALLETS_TOTAL, KURRENTDB_RECONCILE_PASSES_TOTAL,
};

/// Events read from `$all` per request.
pub const PAGE: usize = 500;
/// Streams the pass looks at.
pub const STREAM_PREFIX: &str = "wallet-";
/// Session advisory lock that lets one pass run at a time.
pub const LOCK_ID: i64 = 0x7761_6c6c_6578_7263; // "wallexrc"

/// Errors of a pass (it is tried again at the next interval).
#[derive(Debug, thiserror::Error)]
pub enum OrphanError {
    /// PostgreSQL failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// KurrentDB failed or could not be reached.
    #[error("event store error: {0}")]
    EventStore(#[from] EventStoreError),
    /// The outbox refused the event.
    #[error("outbox error: {0}")]
    Outbox(#[from] OutboxError),
    /// The answer for the key could not be rendered.
    #[error("cannot render the answer: {0}")]
    Render(#[from] WriteError),
    /// A wallex event that cannot be completed (its data or fingerprint do not parse).
    #[error("event {event_id} cannot be completed: {reason}")]
    Event {
        /// The event.
        event_id: uuid::Uuid,
        /// What is wrong with it.
        reason: String,
    },
    /// A position in `$all` beyond what PostgreSQL's `BIGINT` holds.
    #[error("KurrentDB position {0} is beyond BIGINT")]
    Position(u64),
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Another instance was running a pass; this one did nothing.
    pub skipped: bool,
    /// This was the database's first pass: the checkpoint was set to the end of `$all`.
    pub started: bool,
    /// Events looked at and settled (the checkpoint moved past them).
    pub checked: u64,
    /// Wallets completed in PostgreSQL.
    pub completed: u64,
    /// The pass stopped at an event whose key a running request holds.
    pub held: bool,
}

/// How one event was settled.
enum Settled {
    /// Its wallet was written now.
    Completed,
    /// Its wallet was there (completed meanwhile), or it is not a wallet creation.
    Nothing,
    /// Its key is held by a running request: leave it for the next pass.
    Held,
}

/// The reconciliation of KurrentDB into PostgreSQL.
#[derive(Debug, Clone)]
pub struct OrphanCompleter {
    pool: PgPool,
    store: KurrentEventStore,
    /// The idempotency scope of wallet creation (the keys in events are stored under it).
    scope: String,
    /// The answer a completed create gets, as the HTTP layer renders it.
    render: Render,
    /// How long a key's record lives after its request.
    idempotency_ttl: chrono::Duration,
    /// Events younger than this may still be in a running request.
    grace: Duration,
}

impl OrphanCompleter {
    /// A reconciler of `store` into the database of `pool`.
    pub fn new(
        pool: PgPool,
        store: KurrentEventStore,
        scope: impl Into<String>,
        render: Render,
        idempotency_ttl: chrono::Duration,
        grace: Duration,
    ) -> Self {
        Self {
            pool,
            store,
            scope: scope.into(),
            render,
            idempotency_ttl,
            grace,
        }
    }

    /// Runs a pass now and then every `interval` until `cancel`.
    pub async fn run(self, interval: Duration, cancel: CancellationToken) {
        loop {
            let pass = self
                .pass()
                .instrument(tracing::debug_span!("kurrentdb.reconcile"));
            match pass.await {
                Ok(report) => {
                    let result = if report.skipped { "skipped" } else { "ok" };
                    metrics::counter!(KURRENTDB_RECONCILE_PASSES_TOTAL, "result" => result)
                        .increment(1);
                    if report.completed > 0 {
                        tracing::warn!(
                            completed = report.completed,
                            checked = report.checked,
                            "reconciliation completed wallets whose event only KurrentDB had"
                        );
                    } else {
                        tracing::debug!(?report, "reconciliation pass");
                    }
                }
                Err(error) => {
                    metrics::counter!(KURRENTDB_RECONCILE_PASSES_TOTAL, "result" => "error")
                        .increment(1);
                    tracing::warn!(%error, "reconciliation pass failed; trying again later");
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// Sets the checkpoint to the end of `$all` on the first start with this database (before the
    /// server takes requests, so that no create of this database can land before it); `true` if
    /// it did. Needs KurrentDB only then.
    pub async fn prepare(&self) -> Result<bool, OrphanError> {
        if self.checkpoint().await?.is_some() {
            return Ok(false);
        }
        let end = self.store.end_of_all().await?;
        self.save(end, 0, 0).await?;
        tracing::info!(?end, "KurrentDB reconciliation starts at the end of $all");
        Ok(true)
    }

    /// One pass (see the module docs).
    pub async fn pass(&self) -> Result<PassReport, OrphanError> {
        // A connection of its own: the session lock dies with it, whatever happens.
        let mut lock = PgConnection::connect_with(&self.pool.connect_options()).await?;
        let (locked,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
            .bind(LOCK_ID)
            .fetch_one(&mut lock)
            .await?;
        if !locked {
            return Ok(PassReport {
                skipped: true,
                ..PassReport::default()
            });
        }
        let report = self.pass_locked().await;
        let _ = lock.close().await;
        report
    }

    async fn pass_locked(&self) -> Result<PassReport, OrphanError> {
        let mut report = PassReport::default();
        let Some(mut after) = self.checkpoint().await? else {
            report.started = self.prepare().await?;
            return Ok(report);
        };
        loop {
            let page = self
                .store
                .read_all_after(after, STREAM_PREFIX, PAGE)
                .await?;
            let full = page.len() == PAGE;
            let horizon = Utc::now() - chrono::Duration::from_std(self.grace).unwrap_or_default();
            let ready: Vec<&LogEntry> = page
                .iter()
                .take_while(|entry| {
                    entry
                        .event
                        .as_ref()
                        .map_or(true, |event| event.recorded_at <= horizon)
                })
                .collect();
            let young = ready.len() < page.len();
            let missing = self.missing_wallets(&ready).await?;
            let (mut checked, mut completed) = (0, 0);
            for entry in ready {
                let outcome = match &entry.event {
                    Ok(event) if missing.contains(&event.stream_id) => self.complete(event).await?,
                    Ok(_) => Settled::Nothing,
                    Err(reason) => {
                        tracing::warn!(
                            commit = entry.position.commit,
                            %reason,
                            "reconciliation skips an event wallex cannot read"
                        );
                        Settled::Nothing
                    }
                };
                match outcome {
                    Settled::Held => {
                        report.held = true;
                        break;
                    }
                    Settled::Completed => completed += 1,
                    Settled::Nothing => {}
                }
                checked += 1;
                after = Some(entry.position);
            }
            if checked > 0 {
                self.save(after, checked, completed).await?;
            }
            report.checked += checked;
            report.completed += completed;
            if report.held || young || !full {
                return Ok(report);
            }
        }
    }

    /// The streams of `entries`' wallet creations whose wallet PostgreSQL does not have.
    async fn missing_wallets(&self, entries: &[&LogEntry]) -> Result<HashSet<String>, sqlx::Error> {
        let created: Vec<(&str, String)> = entries
            .iter()
            .filter_map(|entry| entry.event.as_ref().ok())
            .filter(|event| event.event_type == WALLET_CREATED)
            .filter_map(|event| {
                let id = event.data.get("walletId")?.as_str()?;
                (wallet_stream(id) == event.stream_id).then(|| (id, event.stream_id.clone()))
            })
            .collect();
        let ids: Vec<&str> = created.iter().map(|(id, _)| *id).collect();
        let present = super::batch::existing_wallets(&self.pool, &ids).await?;
        Ok(created
            .into_iter()
            .filter(|(id, _)| !present.contains(*id))
            .map(|(_, stream)| stream)
            .collect())
    }

    /// Writes what the request of `event` would have written.
    async fn complete(&self, event: &RecordedEvent) -> Result<Settled, OrphanError> {
        let invalid = |reason: String| OrphanError::Event {
            event_id: event.event_id,
            reason,
        };
        let wallet = wallet_event::created_snapshot(&event.data).map_err(invalid)?;
        let key = event
            .metadata
            .idempotency_key
            .as_ref()
            .map(|key| ScopedKey {
                scope: self.scope.clone(),
                key: key.clone(),
            });
        let mut tx = self.pool.begin().await?;
        if let Some(key) = &key {
            let claimed = idempotency::try_claim_many(&mut *tx, &[key]).await?;
            if !claimed.first().copied().unwrap_or(false) {
                return Ok(Settled::Held);
            }
        }
        let inserted = super::batch::insert_wallets(&mut tx, std::slice::from_ref(&wallet)).await?;
        if inserted.is_empty() {
            return Ok(Settled::Nothing);
        }
        outbox::enqueue(&mut *tx, std::slice::from_ref(event)).await?;
        let expires_at = wallet.created_at + self.idempotency_ttl;
        if let (Some(key), Some(fingerprint)) = (&key, &event.metadata.request_fingerprint) {
            if expires_at > Utc::now() {
                let fingerprint = hex::decode(fingerprint)
                    .map_err(|error| invalid(format!("requestFingerprint: {error}")))?;
                let response = (self.render)(&CreateResult::Created {
                    wallet: wallet.clone(),
                    position: event.global_position,
                })?;
                // `false`: the key has a live record already; it stays as it is.
                idempotency::store_many(
                    &mut *tx,
                    &[Completion {
                        key,
                        fingerprint: &fingerprint,
                        response: &response,
                        expires_at,
                    }],
                )
                .await?;
            }
        }
        tx.commit().await?;
        metrics::counter!(KURRENTDB_RECONCILED_WALLETS_TOTAL).increment(1);
        tracing::warn!(
            wallet_id = %wallet.id,
            event_id = %event.event_id,
            "completed a wallet whose event KurrentDB had and PostgreSQL did not"
        );
        Ok(Settled::Completed)
    }

    /// The checkpoint: `None` before the first pass, `Some(None)` at the start of `$all`.
    async fn checkpoint(&self) -> Result<Option<Option<LogPosition>>, OrphanError> {
        let row: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT commit_position, prepare_position FROM kurrentdb_reconciliation WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(commit, prepare)| match (commit, prepare) {
            (Some(commit), Some(prepare)) => Some(LogPosition {
                commit: commit as u64,
                prepare: prepare as u64,
            }),
            _ => None,
        }))
    }

    /// Moves the checkpoint to `at` and adds to its counts.
    async fn save(
        &self,
        at: Option<LogPosition>,
        checked: u64,
        completed: u64,
    ) -> Result<(), OrphanError> {
        let bigint = |n: u64| i64::try_from(n).map_err(|_| OrphanError::Position(n));
        let (commit, prepare) = match at {
            Some(at) => (Some(bigint(at.commit)?), Some(bigint(at.prepare)?)),
            None => (None, None),
        };
        sqlx::query(
            "INSERT INTO kurrentdb_reconciliation
                 (id, commit_position, prepare_position, events_checked, wallets_completed)
             VALUES (1, $1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET
                 commit_position = EXCLUDED.commit_position,
                 prepare_position = EXCLUDED.prepare_position,
                 events_checked = kurrentdb_reconciliation.events_checked + EXCLUDED.events_checked,
                 wallets_completed = kurrentdb_reconciliation.wallets_completed
                                     + EXCLUDED.wallets_completed,
                 updated_at = now()",
        )
        .bind(commit)
        .bind(prepare)
        .bind(checked as i64)
        .bind(completed as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

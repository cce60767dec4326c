//! The create-wallet write path, with group commit.
//!
//! Why it exists: this is where the invariants of a write are kept. For each request it claims the
//! idempotency key, writes the wallet snapshot, appends `WalletCreated` to stream `wallet-{id}`
//! with expected version "no stream", enqueues the event in the outbox and stores the response for
//! the key — all in one PostgreSQL transaction. Either all of it commits or none of it does; a
//! failure anywhere (including a crash) leaves the key retryable.
//!
//! With KurrentDB as the event store (`EVENT_STORE=kurrentdb`) the event is appended there, with
//! the request's deterministic event id, before anything is written to PostgreSQL; the rest is the
//! same transaction. A failure between the two leaves an event a retry completes (KurrentDB
//! deduplicates the append) or, if nobody retries, [`orphans`] does.
//!
//! Group commit. Requests that are already waiting share one transaction (see the `batch`
//! module), so one WAL flush serves many of them: each request still gets its own claim, its own
//! conflicts and its own stored response, and one request's conflict never fails its neighbours.
//! A request that finds an idle committer is not held back for company; batches only form from
//! requests that queue while every committer is busy.

mod batch;
pub mod orphans;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::eventstore::kurrent::KurrentEventStore;
use crate::eventstore::EventStoreError;
use crate::failpoint;
use crate::idempotency::{self, CompletedRequest, ScopedKey, StoredResponse};
use crate::outbox::OutboxError;
use crate::redis_lock_cache::RedisLockCache;
use crate::wallet::{CreateWallet, WalletSnapshot};

/// The idempotency part of a write request.
#[derive(Debug, Clone)]
pub struct IdempotentRequest {
    /// The key and the operation it is scoped to; what is claimed and stored.
    pub key: ScopedKey,
    /// SHA-256 of the canonical body.
    pub fingerprint: Vec<u8>,
}

/// What the caller knows about the request besides its body.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The request's `X-Correlation-Id`; becomes the event's correlation and causation id.
    pub correlation_id: String,
    /// W3C `traceparent` of the request's span (or of the client's, when spans are not
    /// exported): recorded in the event's metadata so the batches that apply it link to it.
    pub traceparent: Option<String>,
    /// The request's idempotency key and body fingerprint; `None` when it sent no key.
    pub idempotency: Option<IdempotentRequest>,
}

/// The business result of a create, before it is rendered as a response.
#[derive(Debug, Clone)]
pub enum CreateResult {
    /// This request created the wallet.
    Created {
        /// The wallet as written.
        wallet: WalletSnapshot,
        /// Global position of the `WalletCreated` event.
        position: i64,
    },
    /// A wallet with this id exists already (created by another request).
    WalletExists {
        /// The id that is taken.
        wallet_id: String,
    },
}

/// What the write path did.
#[derive(Debug, Clone)]
pub enum WriteOutcome {
    /// The request ran now; this is its response (stored for the key, if any).
    Completed(StoredResponse),
    /// A request with the same key and body completed before: its stored response.
    Replayed(StoredResponse),
    /// The key is held by a request still in flight.
    KeyInFlight,
    /// The key was used before with a different body.
    KeyReused,
}

/// Errors of the write path (all of them leave nothing written).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A query or the transaction itself failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The event store refused or failed the append.
    #[error("event store error: {0}")]
    EventStore(#[from] EventStoreError),
    /// Enqueueing the event in the outbox failed.
    #[error("outbox error: {0}")]
    Outbox(#[from] OutboxError),
    /// The wallet's stream exists although its snapshot did not: another writer won the race.
    #[error("stream {0} exists already")]
    StreamExists(String),
    /// The response to return and store could not be serialised.
    #[error("response could not be rendered: {0}")]
    Render(#[from] serde_json::Error),
    /// The transaction this request shared with others failed as a whole; nothing of it was
    /// written.
    #[error("the shared write transaction failed: {0}")]
    Batch(Arc<WriteError>),
    /// The write path is shutting down (its committers have stopped).
    #[error("the write path has stopped")]
    Stopped,
}

/// Write transactions at a time, by default.
pub const DEFAULT_COMMITTERS: u32 = 4;
/// Most create requests one write transaction carries, by default.
pub const DEFAULT_BATCH_MAX: u32 = 128;

/// How many transactions write at once and how many requests one of them may carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritePathConfig {
    /// Transactions that may write wallets at the same time (each holds a pooled connection while
    /// it runs). Requests that arrive while all of them are busy wait and share the next one, so
    /// this bounds the write path's share of the pool.
    pub write_committers: u32,

    /// Most create requests one transaction carries: a bound on the work one commit (and one
    /// failure that splits a batch) can involve.
    pub write_batch_max: u32,
}

impl Default for WritePathConfig {
    fn default() -> Self {
        Self {
            write_committers: DEFAULT_COMMITTERS,
            write_batch_max: DEFAULT_BATCH_MAX,
        }
    }
}

/// The response renderer a request brings: turns its business result into what it is answered
/// with (and what is stored for its key). A plain function, so that the committer task can run it.
pub type Render = fn(&CreateResult) -> Result<StoredResponse, WriteError>;

/// Creates wallets. Cloning it is cheap; the committers stop when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct WritePath {
    pool: PgPool,
    queue: mpsc::Sender<batch::Pending>,
    /// Locks and the replay cache, when Redis is configured.
    redis: Option<RedisLockCache>,
}

/// Stream of a wallet's events.
pub fn wallet_stream(wallet_id: &str) -> String {
    format!("wallet-{wallet_id}")
}

impl WritePath {
    /// Starts the committers (tokio tasks) of a write path on `pool`; stored responses are kept
    /// for `idempotency_ttl`. Events go to `kurrent` when given, else to PostgreSQL's `events`.
    pub fn start(
        pool: PgPool,
        config: &WritePathConfig,
        idempotency_ttl: chrono::Duration,
        redis: Option<RedisLockCache>,
        kurrent: Option<KurrentEventStore>,
    ) -> Self {
        let max_batch = config.write_batch_max.max(1) as usize;
        let committers = config.write_committers.max(1) as usize;
        let (queue, receiver) = mpsc::channel(max_batch * committers);
        let committer = Arc::new(batch::Committer::new(
            pool.clone(),
            idempotency_ttl,
            max_batch,
            redis.clone(),
            kurrent,
        ));
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        for _ in 0..committers {
            tokio::spawn(batch::run(committer.clone(), receiver.clone()));
        }
        Self { pool, queue, redis }
    }

    /// Creates a wallet, once per idempotency key. `render` turns the business result into the
    /// response that is returned and stored for the key.
    #[tracing::instrument(level = "debug", skip_all, fields(wallet_id = %command.wallet_id))]
    pub async fn create_wallet(
        &self,
        command: CreateWallet,
        context: RequestContext,
        render: Render,
    ) -> Result<WriteOutcome, WriteError> {
        // The wallet's lock, for efficiency only: a concurrent create of the same wallet waits
        // here instead of inside a transaction. Released with the request's batch, or when the
        // request ends without one.
        let mut lock = None;
        if let Some(redis) = &self.redis {
            let key = context.idempotency.as_ref().map(|request| &request.key);
            let begun = redis.begin(key, &command.wallet_id).await;
            if let (Some(stored), Some(request)) = (begun.cached, &context.idempotency) {
                // Only committed responses are cached, so a hit is as good as the record.
                return Ok(replay_or_reject(stored, &request.fingerprint));
            }
            lock = begun.lock;
            if begun.held {
                lock = redis.lock(&command.wallet_id).await;
            }
        }
        // A completed key is answered from its record at once while the pool has a connection
        // to spare (idle, or not opened yet); when it has none, the committer looks the key up
        // together with its batch, so that waiting requests never starve the committers.
        let mut looked_up = false;
        if let Some(request) = &context.idempotency {
            let spare = self.pool.num_idle() > 0
                || self.pool.size() < self.pool.options().get_max_connections();
            if spare {
                let span =
                    tracing::debug_span!("idempotency.lookup", replayed = tracing::field::Empty);
                let found = idempotency::find_completed(&self.pool, &request.key)
                    .instrument(span.clone())
                    .await?;
                span.record("replayed", found.is_some());
                if let Some(stored) = found {
                    return Ok(replay_or_reject(stored, &request.fingerprint));
                }
                looked_up = true;
            }
        }
        failpoint::hit("before-claim").await;
        let (reply, answer) = oneshot::channel();
        let pending = batch::Pending {
            request: batch::Request {
                command,
                context,
                render,
                looked_up,
                lock,
            },
            reply,
            span: tracing::Span::current(),
        };
        self.queue
            .send(pending)
            .await
            .map_err(|_| WriteError::Stopped)?;
        answer.await.map_err(|_| WriteError::Stopped)?
    }

    /// The wallet snapshot from the write model.
    pub async fn find_wallet(
        &self,
        wallet_id: &str,
    ) -> Result<Option<WalletSnapshot>, sqlx::Error> {
        let row: Option<WalletRow> = sqlx::query_as(
            "SELECT id, owner_id, balance, currency, version, created_at, updated_at
             FROM wallets WHERE id = $1",
        )
        .bind(wallet_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| WalletSnapshot {
            id: row.id,
            owner_id: row.owner_id,
            balance: row.balance,
            currency: row.currency,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }))
    }
}

fn replay_or_reject(stored: CompletedRequest, fingerprint: &[u8]) -> WriteOutcome {
    if stored.fingerprint == fingerprint {
        WriteOutcome::Replayed(stored.response)
    } else {
        WriteOutcome::KeyReused
    }
}

#[derive(sqlx::FromRow)]
struct WalletRow {
    id: String,
    owner_id: String,
    balance: rust_decimal::Decimal,
    currency: String,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

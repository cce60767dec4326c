//! The create-wallet write path: one PostgreSQL transaction per request.
//!
//! Why it exists: this is where the invariants of a write are kept. In one transaction it claims
//! the idempotency key, writes the wallet snapshot, appends `WalletCreated` to stream
//! `wallet-{id}` with expected version "no stream", enqueues the event in the outbox and stores the
//! response for the key. Either all of it commits or none of it does; a failure anywhere (including
//! a crash) leaves the key retryable.

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::eventstore::postgres::PgEventStore;
use crate::eventstore::{
    deterministic_event_id, EventMetadata, EventStore, EventStoreError, ExpectedVersion, NewEvent,
};
use crate::failpoint;
use crate::idempotency::{self, CompletedRequest, ScopedKey, StoredResponse};
use crate::outbox::{self, OutboxError};
use crate::wallet::{CreateWallet, WalletSnapshot, WALLET_CREATED};

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
}

/// Creates wallets.
#[derive(Debug, Clone)]
pub struct WritePath {
    pool: PgPool,
    events: PgEventStore,
    idempotency_ttl: chrono::Duration,
}

/// Stream of a wallet's events.
pub fn wallet_stream(wallet_id: &str) -> String {
    format!("wallet-{wallet_id}")
}

impl WritePath {
    /// A write path on `pool`; stored responses are kept for `idempotency_ttl`.
    pub fn new(pool: PgPool, idempotency_ttl: chrono::Duration) -> Self {
        Self {
            events: PgEventStore::new(pool.clone()),
            pool,
            idempotency_ttl,
        }
    }

    /// Creates a wallet, once per idempotency key. `render` turns the business result into the
    /// response that is returned and stored for the key.
    #[tracing::instrument(skip_all, fields(wallet_id = %command.wallet_id))]
    pub async fn create_wallet(
        &self,
        command: &CreateWallet,
        context: &RequestContext,
        render: impl Fn(&CreateResult) -> Result<StoredResponse, WriteError>,
    ) -> Result<WriteOutcome, WriteError> {
        // Completed keys are immutable until they expire: answer replays without a transaction.
        if let Some(request) = &context.idempotency {
            if let Some(stored) = idempotency::find_completed(&self.pool, &request.key).await? {
                return Ok(replay_or_reject(stored, &request.fingerprint));
            }
        }

        failpoint::hit("before-claim").await;
        let mut tx = self.pool.begin().await?;
        if let Some(request) = &context.idempotency {
            if !idempotency::try_claim(&mut *tx, &request.key).await? {
                return Ok(WriteOutcome::KeyInFlight);
            }
            // The key may have completed between the first look and the claim; storing the
            // response below detects that, so the common path saves a round trip.
        }

        let now = Utc::now().trunc_subsecs(3);
        let result = match self.write_wallet(&mut tx, command, context, now).await? {
            Some(result) => result,
            None => CreateResult::WalletExists {
                wallet_id: command.wallet_id.clone(),
            },
        };
        let response = render(&result)?;
        match (&result, &context.idempotency) {
            (CreateResult::WalletExists { .. }, None) => {
                tx.rollback().await?;
                return Ok(WriteOutcome::Completed(response));
            }
            (_, Some(request)) => {
                let expires_at = now + self.idempotency_ttl;
                let (key, fingerprint) = (&request.key, &request.fingerprint);
                if !idempotency::store(&mut *tx, key, fingerprint, &response, expires_at).await? {
                    tx.rollback().await?;
                    return match idempotency::find_completed(&self.pool, &request.key).await? {
                        Some(stored) => Ok(replay_or_reject(stored, &request.fingerprint)),
                        // Completed and expired within this request: it is simply in the way.
                        None => Ok(WriteOutcome::KeyInFlight),
                    };
                }
            }
            (CreateResult::Created { .. }, None) => {}
        }
        failpoint::hit("before-commit").await;
        tx.commit().await?;
        Ok(WriteOutcome::Completed(response))
    }

    /// Writes snapshot, event and outbox row. `None` if the wallet exists already.
    async fn write_wallet(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        command: &CreateWallet,
        context: &RequestContext,
        now: DateTime<Utc>,
    ) -> Result<Option<CreateResult>, WriteError> {
        let wallet = WalletSnapshot {
            id: command.wallet_id.clone(),
            owner_id: command.owner_id.clone(),
            balance: command.initial_balance,
            currency: command.currency.clone(),
            version: 1,
            created_at: now,
            updated_at: now,
        };
        // A concurrent create of the same id waits here for the other transaction, then finds
        // the row: exactly one of them creates the wallet.
        let inserted = sqlx::query(
            "INSERT INTO wallets (id, owner_id, balance, currency, version, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&wallet.id)
        .bind(&wallet.owner_id)
        .bind(wallet.balance)
        .bind(&wallet.currency)
        .bind(wallet.version)
        .bind(wallet.created_at)
        .bind(wallet.updated_at)
        .execute(&mut **tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Ok(None);
        }

        let event_id = match &context.idempotency {
            Some(request) => deterministic_event_id(
                &request.key.scope,
                &request.key.key,
                &request.fingerprint,
                0,
            ),
            None => Uuid::new_v4(),
        };
        let event = NewEvent {
            event_id,
            event_type: WALLET_CREATED.to_owned(),
            data: json!({
                "walletId": wallet.id,
                "ownerId": wallet.owner_id,
                "initialBalance": wallet.balance.to_string(),
                "currency": wallet.currency,
                "createdAt": crate::wallet::format_timestamp(now),
            }),
            metadata: EventMetadata {
                correlation_id: context.correlation_id.clone(),
                causation_id: context.correlation_id.clone(),
                idempotency_key: context
                    .idempotency
                    .as_ref()
                    .map(|request| request.key.key.clone()),
            },
        };
        let recorded = self
            .events
            .append(
                tx,
                &wallet_stream(&wallet.id),
                ExpectedVersion::NoStream,
                std::slice::from_ref(&event),
                now,
            )
            .await
            .map_err(|error| match error {
                EventStoreError::WrongExpectedVersion { stream, .. } => {
                    WriteError::StreamExists(stream)
                }
                other => WriteError::EventStore(other),
            })?;
        failpoint::hit("after-append").await;
        outbox::enqueue(&mut **tx, &recorded).await?;
        let position = recorded
            .last()
            .map(|event| event.global_position)
            .ok_or(EventStoreError::EmptyAppend)?;
        Ok(Some(CreateResult::Created { wallet, position }))
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

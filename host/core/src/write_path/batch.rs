//! One write transaction for many create requests (group commit).
//!
//! A committer takes every request waiting in the queue (up to the batch limit) and writes them in
//! one transaction, with one statement per table:
//!
//! 1. look up the keys that their requests could not look up themselves (no connection was free;
//!    one statement, before the transaction): a completed key answers its replay (or
//!    `KeyReused`); a batch of replays needs no transaction at all;
//! 2. claim the other keys (`pg_try_advisory_xact_lock` over an array); a key held elsewhere, or
//!    by an earlier request of the same batch, answers that request `KeyInFlight`;
//! 3. insert the wallets, sorted by id so that two batches wanting the same ids take their row
//!    locks in the same order and cannot deadlock; an id that exists (or was taken by an earlier
//!    request of the batch) answers `WalletExists`;
//! 4. append one `WalletCreated` per new wallet ([`EventStore::append_many`]) and enqueue them
//!    in the outbox. With KurrentDB as the event store, steps 3 and 4 go the other way round:
//!    the streams are created in KurrentDB first, then the wallets are inserted from the events
//!    as stored (see [`create_in_kurrentdb`]);
//! 5. render each request's response and store those of requests with a key;
//! 6. commit, then answer every request.
//!
//! If the whole transaction fails, every request of the batch gets the error and nothing is
//! stored. Two anomalies belong to one request but can only be seen after its rows are written: a
//! key that completed between the look-up and the claim (its record exists when step 5 stores),
//! and a stream that exists without its wallet. Then the batch is rolled back and its requests are run again one
//! transaction each, where they are answered exactly as alone (replay, or the error).

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use futures_util::future::join_all;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::{mpsc, oneshot, Mutex};
use tracing::Instrument;
use uuid::Uuid;

use super::{
    replay_or_reject, wallet_stream, CreateResult, Render, RequestContext, WriteError, WriteOutcome,
};
use crate::eventstore::kurrent::{KurrentEventStore, StreamCreation};
use crate::eventstore::postgres::PgEventStore;
use crate::eventstore::{
    deterministic_event_id, EventMetadata, EventStore, EventStoreError, ExpectedVersion, NewEvent,
    RecordedEvent, StreamAppend,
};
use crate::failpoint;
use crate::idempotency::{self, Completion, ScopedKey};
use crate::outbox;
use crate::redis_lock_cache::{Completed, RedisLockCache, WalletLock};
use crate::wallet::{CreateWallet, WalletSnapshot, WALLET_CREATED};
use crate::wallet_event::{self, WalletEvent};
use wallex_telemetry::catalogue::{
    DB_POOL_ACQUIRE_DURATION_SECONDS, WALLET_WRITE_BATCH_SIZE, WALLET_WRITE_BATCH_SPLITS_TOTAL,
    WALLET_WRITE_REQUESTS_TOTAL, WALLET_WRITE_TRANSACTIONS_TOTAL,
};

/// A request waiting for a committer, and where its answer goes.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) request: Request,
    pub(super) reply: oneshot::Sender<Result<WriteOutcome, WriteError>>,
    /// The request's span: the transaction's span links to it (`follows_from`).
    pub(super) span: tracing::Span,
}

/// What the committers share: the pool and the settings of a write.
#[derive(Debug)]
pub(super) struct Committer {
    pool: PgPool,
    events: PgEventStore,
    /// The event store when it is KurrentDB: events are appended there, before the commit,
    /// instead of to `events`.
    kurrent: Option<KurrentEventStore>,
    idempotency_ttl: chrono::Duration,
    max_batch: usize,
    /// The replay cache, when Redis is configured.
    redis: Option<RedisLockCache>,
}

/// What a transaction settled.
struct Written {
    /// Each request's outcome, in order.
    outcomes: Vec<WriteOutcome>,
    /// When the stored responses expire, if the transaction committed any.
    expires_at: Option<DateTime<Utc>>,
}

impl Written {
    /// Outcomes settled without a commit (replays, a key that completed meanwhile).
    fn uncommitted(outcomes: Vec<WriteOutcome>) -> Self {
        Self {
            outcomes,
            expires_at: None,
        }
    }
}

/// The wallets a transaction creates, with their events.
struct Created {
    /// Per request: the global position of its wallet's event and the wallet, if it created one.
    positions: Vec<Option<(i64, WalletSnapshot)>>,
    /// The events to enqueue in the outbox.
    recorded: Vec<RecordedEvent>,
}

/// Why a batch did not commit.
enum Failure {
    /// The transaction failed; every request gets this error.
    Write(WriteError),
    /// One request needs a transaction of its own (see the module docs); rolled back.
    Isolate,
}

macro_rules! failure_from {
    ($($error:ty),*) => {$(
        impl From<$error> for Failure {
            fn from(error: $error) -> Self {
                Self::Write(error.into())
            }
        }
    )*};
}
failure_from!(
    sqlx::Error,
    EventStoreError,
    outbox::OutboxError,
    WriteError
);

/// Takes batches from `queue` and commits them until every sender is gone.
pub(super) async fn run(committer: Arc<Committer>, queue: Arc<Mutex<mpsc::Receiver<Pending>>>) {
    let mut batch = Vec::with_capacity(committer.max_batch);
    loop {
        {
            // Whoever holds the receiver waits for the next request, then takes what else is
            // waiting: a lone request goes at once, a crowd shares one transaction.
            let mut queue = queue.lock().await;
            if queue.recv_many(&mut batch, committer.max_batch).await == 0 {
                return;
            }
        }
        let span = tracing::debug_span!(
            parent: None,
            "wallet.write_transaction",
            requests = batch.len()
        );
        for pending in &batch {
            span.follows_from(&pending.span);
        }
        committer
            .commit(std::mem::take(&mut batch))
            .instrument(span)
            .await;
    }
}

impl Committer {
    pub(super) fn new(
        pool: PgPool,
        idempotency_ttl: chrono::Duration,
        max_batch: usize,
        redis: Option<RedisLockCache>,
        kurrent: Option<KurrentEventStore>,
    ) -> Self {
        Self {
            events: PgEventStore::new(pool.clone()),
            kurrent,
            pool,
            idempotency_ttl,
            max_batch,
            redis,
        }
    }

    /// Writes `batch` and answers each of its requests.
    async fn commit(&self, batch: Vec<Pending>) {
        // A request that gave up while it waited (its timeout, a dropped connection) is not
        // written: nobody would learn its outcome but a retry, which finds it not done.
        let (mut requests, replies): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .filter(|pending| !pending.reply.is_closed())
            .map(|pending| (pending.request, pending.reply))
            .unzip();
        if requests.is_empty() {
            return;
        }
        match self.write(&requests).await {
            Ok(written) => {
                self.finish_redis(&mut requests, Some(&written));
                let outcomes = written.outcomes;
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    // A requester that went away (timeout, disconnect) finds its response stored.
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(Failure::Isolate) => {
                tracing::debug!(
                    requests = requests.len(),
                    "batch split: one transaction each"
                );
                metrics::counter!(WALLET_WRITE_BATCH_SPLITS_TOTAL).increment(1);
                for (request, reply) in requests.into_iter().zip(replies) {
                    let mut alone = [request];
                    let outcome = match self.write(&alone).await {
                        Ok(mut written) => {
                            self.finish_redis(&mut alone, Some(&written));
                            written.outcomes.pop().ok_or(WriteError::Stopped)
                        }
                        Err(Failure::Write(error)) => Err(error),
                        // A lone request settles its anomaly itself; this is unreachable.
                        Err(Failure::Isolate) => Err(WriteError::Stopped),
                    };
                    let _ = reply.send(outcome);
                }
            }
            Err(Failure::Write(error)) => {
                self.finish_redis(&mut requests, None);
                let mut replies = replies;
                if replies.len() == 1 {
                    if let Some(reply) = replies.pop() {
                        let _ = reply.send(Err(error));
                    }
                    return;
                }
                tracing::warn!(requests = replies.len(), %error, "write batch failed");
                let shared = Arc::new(error);
                for reply in replies {
                    let _ = reply.send(Err(WriteError::Batch(shared.clone())));
                }
            }
        }
    }

    /// Hands the responses stored by a committed transaction to the replay cache and releases
    /// the requests' wallet locks, in one Redis round trip (in the background: the requests are
    /// answered at once).
    fn finish_redis(&self, requests: &mut [Request], written: Option<&Written>) {
        let Some(redis) = &self.redis else {
            return;
        };
        let locks: Vec<WalletLock> = requests.iter_mut().filter_map(|r| r.lock.take()).collect();
        let expires_at = written.and_then(|written| written.expires_at);
        let completed: Vec<Completed> = requests
            .iter()
            .zip(
                written
                    .map(|written| written.outcomes.as_slice())
                    .unwrap_or_default(),
            )
            .filter_map(|(request, outcome)| {
                let expires_at = expires_at?;
                let idempotent = request.context.idempotency.as_ref()?;
                let WriteOutcome::Completed(response) = outcome else {
                    return None;
                };
                Some(Completed {
                    key: idempotent.key.clone(),
                    fingerprint: idempotent.fingerprint.clone(),
                    response: response.clone(),
                    expires_at,
                })
            })
            .collect();
        if completed.is_empty() && locks.is_empty() {
            return;
        }
        let redis = redis.clone();
        tokio::spawn(async move { redis.finish(completed, locks).await });
    }

    /// Steps 3 and 4 with PostgreSQL as the event store: the wallets, then their events in the
    /// same transaction. A stream that exists without its wallet is `Failure::Isolate`.
    async fn create_in_postgres(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        requests: &[Request],
        writers: &[usize],
        now: DateTime<Utc>,
    ) -> Result<Created, Failure> {
        let wallets: Vec<WalletSnapshot> = writers
            .iter()
            .map(|&i| snapshot(&requests[i].command, now))
            .collect();
        let inserted = insert_wallets(tx, &wallets).await?;
        let created: Vec<(usize, &WalletSnapshot)> = writers
            .iter()
            .zip(&wallets)
            .filter(|(_, wallet)| inserted.contains(wallet.id.as_str()))
            .map(|(&i, wallet)| (i, wallet))
            .collect();
        let events: Vec<(String, [NewEvent; 1])> = created
            .iter()
            .map(|(i, wallet)| {
                let context = &requests[*i].context;
                (
                    wallet_stream(&wallet.id),
                    [created_event(wallet, context, now, false)],
                )
            })
            .collect();
        let appends: Vec<StreamAppend<'_>> = events
            .iter()
            .map(|(stream, events)| StreamAppend {
                stream,
                expected: ExpectedVersion::NoStream,
                events,
            })
            .collect();
        let appended = if appends.is_empty() {
            Vec::new()
        } else {
            self.events.append_many(tx, &appends, now).await?
        };
        failpoint::hit("after-append").await;
        let mut positions = vec![None; requests.len()];
        let mut recorded = Vec::with_capacity(appended.len());
        for ((i, wallet), outcome) in created.into_iter().zip(appended) {
            match outcome {
                Ok(events) => {
                    positions[i] = events
                        .last()
                        .map(|event| (event.global_position, wallet.clone()));
                    recorded.extend(events);
                }
                // The stream exists without its wallet: answered alone (see the module docs).
                Err(EventStoreError::WrongExpectedVersion { .. }) => return Err(Failure::Isolate),
                Err(other) => return Err(other.into()),
            }
        }
        Ok(Created {
            positions,
            recorded,
        })
    }

    /// One transaction for `requests`; their outcomes in the same order.
    /// Step 1 of [`Self::write`]: the keys not looked up yet whose record is completed are
    /// settled from it (a replay, or `KeyReused` for another body).
    async fn answer_completed(
        &self,
        requests: &[Request],
        keyed: &[(usize, &ScopedKey)],
        settled: &mut [Option<WriteOutcome>],
    ) -> Result<(), Failure> {
        let unknown: Vec<(usize, &ScopedKey)> = keyed
            .iter()
            .copied()
            .filter(|(i, _)| !requests[*i].looked_up)
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let keys: Vec<&ScopedKey> = unknown.iter().map(|(_, key)| *key).collect();
        let completed = idempotency::find_completed_many(&self.pool, &keys)
            .instrument(tracing::debug_span!(
                "idempotency.lookup",
                keys = keys.len()
            ))
            .await?;
        for ((i, _), completed) in unknown.iter().zip(completed) {
            if let Some(stored) = completed {
                settled[*i] = Some(replay_or_reject(stored, requests[*i].fingerprint()));
            }
        }
        Ok(())
    }

    async fn write(&self, requests: &[Request]) -> Result<Written, Failure> {
        let alone = requests.len() == 1;
        let mut settled: Vec<Option<WriteOutcome>> = vec![None; requests.len()];
        // 1. Completed keys are answered from their record (a replay, or `KeyReused` for another
        //    body) without a transaction: a record does not change until it expires.
        let keyed: Vec<(usize, &ScopedKey)> = requests
            .iter()
            .enumerate()
            .filter_map(|(i, request)| Some((i, &request.context.idempotency.as_ref()?.key)))
            .collect();
        self.answer_completed(requests, &keyed, &mut settled)
            .await?;
        if settled.iter().all(Option::is_some) {
            return Ok(Written::uncommitted(
                settled.into_iter().flatten().collect(),
            ));
        }

        // 2. Claims of the other keys. A key that completes between the look-up and the claim is
        //    caught when its response is stored (step 5).
        let waited = std::time::Instant::now();
        let mut tx = self.pool.begin().await?;
        metrics::histogram!(DB_POOL_ACQUIRE_DURATION_SECONDS)
            .record(waited.elapsed().as_secs_f64());
        claim_keys(&mut tx, keyed, &mut settled).await?;

        // 3. and 4. The wallets (in id order; the first request of each id writes it) and their
        //    events, then the events' outbox rows.
        let now = Utc::now().trunc_subsecs(3);
        let writers = writers_in_id_order(requests, &settled);
        let created = match &self.kurrent {
            None => {
                self.create_in_postgres(&mut tx, requests, &writers, now)
                    .await
            }
            Some(store) => create_in_kurrentdb(store, &mut tx, requests, &writers, now).await,
        };
        let Created {
            positions,
            recorded,
        } = match created {
            Ok(created) => created,
            Err(failure) => {
                // Rolled back here, not on drop: a dropped transaction's rollback is only sent
                // when its connection goes back to the pool, in a task of its own, and until
                // then its key claims are held; the split that follows would find its own
                // requests' keys in flight.
                if let Err(error) = tx.rollback().await {
                    // The connection is unusable; the pool closes it, and its locks with it.
                    tracing::debug!(%error, "rollback of a failed write batch failed");
                }
                return Err(match failure {
                    Failure::Isolate if alone => Failure::Write(WriteError::StreamExists(
                        wallet_stream(&requests[0].command.wallet_id),
                    )),
                    failure => failure,
                });
            }
        };
        outbox::enqueue(&mut *tx, &recorded).await?;

        // 5. Responses, stored for the keys.
        let rendered = render_responses(requests, &positions, &mut settled)?;
        let expires_at = now + self.idempotency_ttl;
        let completions: Vec<Completion<'_>> = rendered
            .iter()
            .filter_map(|&i| {
                let idempotent = requests[i].context.idempotency.as_ref()?;
                let Some(WriteOutcome::Completed(response)) = &settled[i] else {
                    return None;
                };
                Some(Completion {
                    key: &idempotent.key,
                    fingerprint: &idempotent.fingerprint,
                    response,
                    expires_at,
                })
            })
            .collect();
        let stored = idempotency::store_many(&mut *tx, &completions).await?;
        if let Some((lost, _)) = completions
            .iter()
            .zip(&stored)
            .find(|(_, stored)| !**stored)
        {
            // The key completed between the look-up and the claim.
            tx.rollback().await?;
            if !alone {
                return Err(Failure::Isolate);
            }
            return Ok(Written::uncommitted(vec![
                match idempotency::find_completed(&self.pool, lost.key).await? {
                    Some(stored) => replay_or_reject(stored, lost.fingerprint),
                    // Completed and expired within this request: it is simply in the way.
                    None => WriteOutcome::KeyInFlight,
                },
            ]));
        }

        failpoint::hit("before-commit").await;
        tx.commit().await?;
        metrics::counter!(WALLET_WRITE_TRANSACTIONS_TOTAL).increment(1);
        metrics::counter!(WALLET_WRITE_REQUESTS_TOTAL).increment(requests.len() as u64);
        metrics::histogram!(WALLET_WRITE_BATCH_SIZE).record(requests.len() as f64);
        // Every request is settled: early (replay, in flight) or with its rendered response.
        Ok(Written {
            outcomes: settled.into_iter().flatten().collect(),
            expires_at: Some(expires_at),
        })
    }
}

/// Step 2 of [`Committer::write`]: the keys of requests not settled yet are claimed in the
/// transaction; one another transaction holds is `KeyInFlight`.
async fn claim_keys(
    tx: &mut PgConnection,
    keyed: Vec<(usize, &ScopedKey)>,
    settled: &mut [Option<WriteOutcome>],
) -> Result<(), Failure> {
    let claiming: Vec<(usize, &ScopedKey)> = keyed
        .into_iter()
        .filter(|(i, _)| settled[*i].is_none())
        .collect();
    if claiming.is_empty() {
        return Ok(());
    }
    let keys: Vec<&ScopedKey> = claiming.iter().map(|(_, key)| *key).collect();
    let claimed = idempotency::try_claim_many(&mut *tx, &keys)
        .instrument(tracing::debug_span!("idempotency.claim", keys = keys.len()))
        .await?;
    for ((i, _), claimed) in claiming.iter().zip(claimed) {
        if !claimed {
            settled[*i] = Some(WriteOutcome::KeyInFlight);
        }
    }
    Ok(())
}

/// The requests that write a wallet, in wallet id order (so two batches cannot deadlock on
/// them): of the requests not settled yet, the first of each id.
fn writers_in_id_order(requests: &[Request], settled: &[Option<WriteOutcome>]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..requests.len())
        .filter(|i| settled[*i].is_none())
        .collect();
    order.sort_by(|a, b| {
        requests[*a]
            .command
            .wallet_id
            .cmp(&requests[*b].command.wallet_id)
    });
    let mut writers = Vec::with_capacity(order.len());
    let mut taken = HashSet::with_capacity(order.len());
    for &i in &order {
        if taken.insert(requests[i].command.wallet_id.as_str()) {
            writers.push(i);
        }
    }
    writers
}

/// Each request not settled yet gets its response rendered: `201` with its wallet where it
/// wrote one, the existing wallet's answer otherwise. Returns which requests were rendered.
fn render_responses(
    requests: &[Request],
    positions: &[Option<(i64, WalletSnapshot)>],
    settled: &mut [Option<WriteOutcome>],
) -> Result<Vec<usize>, Failure> {
    let mut rendered = Vec::with_capacity(requests.len());
    for (i, request) in requests.iter().enumerate() {
        if settled[i].is_some() {
            continue;
        }
        let result = match &positions[i] {
            Some((position, wallet)) => CreateResult::Created {
                wallet: wallet.clone(),
                position: *position,
            },
            None => CreateResult::WalletExists {
                wallet_id: request.command.wallet_id.clone(),
            },
        };
        settled[i] = Some(WriteOutcome::Completed((request.render)(&result)?));
        rendered.push(i);
    }
    Ok(rendered)
}

/// A create request as the committers take it.
#[derive(Debug)]
pub(super) struct Request {
    pub(super) command: CreateWallet,
    pub(super) context: RequestContext,
    /// Renders the business result into the response (see [`Render`]).
    pub(super) render: Render,
    /// Whether the request looked its key up itself (and found no record): the batch then only
    /// claims it.
    pub(super) looked_up: bool,
    /// The wallet's Redis lock, released with the batch's cache writes.
    pub(super) lock: Option<WalletLock>,
}

impl Request {
    /// The fingerprint of the request's body (empty without a key).
    fn fingerprint(&self) -> &[u8] {
        self.context
            .idempotency
            .as_ref()
            .map_or(&[][..], |request| &request.fingerprint)
    }
}

fn snapshot(command: &CreateWallet, now: DateTime<Utc>) -> WalletSnapshot {
    WalletSnapshot {
        id: command.wallet_id.clone(),
        owner_id: command.owner_id.clone(),
        balance: command.initial_balance,
        currency: command.currency.clone(),
        version: 1,
        created_at: now,
        updated_at: now,
    }
}

/// Steps 3 and 4 with KurrentDB as the event store. The wallets PostgreSQL has are answered
/// `WalletExists` without touching KurrentDB; each other one creates its stream with its
/// `WalletCreated` (expected "no stream", the request's deterministic event id), all at once,
/// before anything is written here. A stream that exists with another event is `WalletExists`; an
/// earlier attempt's event (same id) is taken as stored, so a retry completes exactly what that
/// attempt began. Then the wallets are inserted from the events as stored. KurrentDB being
/// unreachable fails the whole transaction: nothing is written to PostgreSQL, and whatever did
/// reach KurrentDB is completed by a retry with the same key or by the reconciliation pass.
async fn create_in_kurrentdb(
    store: &KurrentEventStore,
    tx: &mut Transaction<'static, Postgres>,
    requests: &[Request],
    writers: &[usize],
    now: DateTime<Utc>,
) -> Result<Created, Failure> {
    let ids: Vec<&str> = writers
        .iter()
        .map(|&i| requests[i].command.wallet_id.as_str())
        .collect();
    let existing = existing_wallets(&mut **tx, &ids).await?;
    let candidates: Vec<usize> = writers
        .iter()
        .copied()
        .filter(|&i| !existing.contains(requests[i].command.wallet_id.as_str()))
        .collect();
    let events: Vec<(String, NewEvent)> = candidates
        .iter()
        .map(|&i| {
            let wallet = snapshot(&requests[i].command, now);
            let event = created_event(&wallet, &requests[i].context, now, true);
            (wallet_stream(&wallet.id), event)
        })
        .collect();
    let outcomes = join_all(events.iter().zip(&candidates).map(|((stream, event), &i)| {
        // Only a keyed request can be a retry of an earlier append.
        let keyed = requests[i].context.idempotency.is_some();
        store.create_stream(stream, event, now, keyed)
    }))
    .instrument(tracing::debug_span!(
        "kurrentdb.append",
        streams = events.len()
    ))
    .await;
    failpoint::hit("after-append").await;
    let mut created = Vec::with_capacity(candidates.len());
    for (&i, outcome) in candidates.iter().zip(outcomes) {
        match outcome? {
            StreamCreation::Created(event) => {
                let wallet = wallet_event::created_snapshot(&event.data)
                    .map_err(|error| EventStoreError::Backend(error.into()))?;
                created.push((i, wallet, *event));
            }
            StreamCreation::Exists => {}
        }
    }
    let wallets: Vec<WalletSnapshot> = created
        .iter()
        .map(|(_, wallet, _)| wallet.clone())
        .collect();
    let inserted = insert_wallets(tx, &wallets).await?;
    let mut positions = vec![None; requests.len()];
    let mut recorded = Vec::with_capacity(created.len());
    for (i, wallet, event) in created {
        positions[i] = Some((event.global_position, wallet.clone()));
        // A wallet that is there already was completed by the reconciliation pass from this
        // very event (it appears only after the grace period): its outbox row exists too.
        if inserted.contains(wallet.id.as_str()) {
            recorded.push(event);
        }
    }
    Ok(Created {
        positions,
        recorded,
    })
}

/// Which of `ids` have a wallet.
pub(super) async fn existing_wallets<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    ids: &[&str],
) -> Result<HashSet<String>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    // Planned for each call (an unnamed statement), not once per connection: a plan cached
    // while `wallets` was empty is a sequential scan, kept until the table is analysed, and it
    // cost ~2 ms a batch at 25,000 wallets (more than the rest of the batch's statements together).
    let rows: Vec<(String,)> = sqlx::query_as("SELECT id FROM wallets WHERE id = ANY($1::text[])")
        .bind(ids)
        .persistent(false)
        .fetch_all(executor)
        .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Inserts the snapshots in order; returns the ids that were new. A concurrent create of the same
/// id waits here for the other transaction, then finds the row: exactly one of them creates it.
pub(super) async fn insert_wallets(
    tx: &mut Transaction<'static, Postgres>,
    wallets: &[WalletSnapshot],
) -> Result<HashSet<String>, sqlx::Error> {
    if wallets.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<&str> = wallets.iter().map(|w| w.id.as_str()).collect();
    let owners: Vec<&str> = wallets.iter().map(|w| w.owner_id.as_str()).collect();
    let balances: Vec<rust_decimal::Decimal> = wallets.iter().map(|w| w.balance).collect();
    let currencies: Vec<&str> = wallets.iter().map(|w| w.currency.as_str()).collect();
    let created: Vec<DateTime<Utc>> = wallets.iter().map(|w| w.created_at).collect();
    let rows: Vec<(String,)> = sqlx::query_as(
        "INSERT INTO wallets (id, owner_id, balance, currency, version, created_at, updated_at)
         SELECT id, owner_id, balance, currency, 1, created_at, created_at
         FROM UNNEST($1::text[], $2::text[], $3::numeric[], $4::text[], $5::timestamptz[])
              WITH ORDINALITY AS input (id, owner_id, balance, currency, created_at, n)
         ORDER BY n
         ON CONFLICT (id) DO NOTHING
         RETURNING id",
    )
    .bind(&ids)
    .bind(&owners)
    .bind(&balances)
    .bind(&currencies)
    .bind(&created)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// The `WalletCreated` event of a new wallet. Its id derives from the request's key, so a retry
/// against an external store deduplicates; for such a store (`external`) the metadata also
/// carries the body's fingerprint, so that the reconciliation pass can store the answer.
fn created_event(
    wallet: &WalletSnapshot,
    context: &RequestContext,
    now: DateTime<Utc>,
    external: bool,
) -> NewEvent {
    let event_id = match &context.idempotency {
        Some(request) => deterministic_event_id(
            &request.key.scope,
            &request.key.key,
            &request.fingerprint,
            0,
        ),
        None => Uuid::new_v4(),
    };
    NewEvent {
        event_id,
        event_type: WALLET_CREATED.to_owned(),
        data: WalletEvent::Created {
            wallet_id: wallet.id.clone(),
            owner_id: wallet.owner_id.clone(),
            initial_balance: wallet.balance,
            currency: wallet.currency.clone(),
            at: now,
        }
        .to_data(),
        metadata: EventMetadata {
            correlation_id: context.correlation_id.clone(),
            causation_id: context.correlation_id.clone(),
            idempotency_key: context
                .idempotency
                .as_ref()
                .map(|request| request.key.key.clone()),
            traceparent: context.traceparent.clone(),
            request_fingerprint: context
                .idempotency
                .as_ref()
                .filter(|_| external)
                .map(|request| hex::encode(&request.fingerprint)),
            kurrentdb: None,
        },
    }
}

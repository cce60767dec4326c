//! Idempotency keys (draft-ietf-httpapi-idempotency-key-header, with Stripe's semantics).
//!
//! Why it exists: a client may retry a write any number of times with the same `Idempotency-Key`
//! and get the first outcome back, byte for byte, without the write happening twice.
//!
//! How: a key is scoped to method + path. A request holding a key takes a transaction-scoped
//! advisory lock on `hash(scope, key)` inside its write transaction; that lock *is* the in-flight
//! claim, so it disappears with the transaction whatever happens to the process (commit, rollback,
//! crash, lost connection) and a key can never stay stuck. The completed response is stored in the
//! same transaction as the write itself. A second request with the key finds either the lock taken
//! (409, retry later) or the stored response (replay if the body's fingerprint matches, 422 if not).
//! Requests rejected by validation never reach this module, so they store nothing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{PgExecutor, PgPool};
use tokio_util::sync::CancellationToken;

/// How long a completed request's response is kept for replay, in hours, by default.
pub const DEFAULT_TTL_HOURS: u32 = 24;
/// Whether writes must carry an `Idempotency-Key`, by default.
pub const DEFAULT_KEY_REQUIRED: bool = false;
/// How often expired keys are deleted, in seconds, by default.
pub const DEFAULT_CLEANUP_INTERVAL_SECS: u64 = 60;
/// Most expired keys deleted per statement, by default.
pub const DEFAULT_CLEANUP_BATCH_SIZE: u32 = 1_000;

/// Idempotency-key handling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyConfig {
    /// How long a completed request's response is kept for replay, in hours: a client retrying
    /// within it gets the first outcome back; after it, the key is free again.
    pub idempotency_ttl_hours: u32,

    /// Reject writes that carry no `Idempotency-Key` header (400), for deployments whose clients
    /// must never create twice by retrying.
    pub idempotency_key_required: bool,

    /// How often expired keys are deleted, in seconds (expired keys are ignored on read anyway;
    /// this bounds the table's size).
    pub idempotency_cleanup_interval_secs: u64,

    /// At most this many expired keys are deleted per statement, so that a sweep never holds
    /// long locks.
    pub idempotency_cleanup_batch_size: u32,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            idempotency_ttl_hours: DEFAULT_TTL_HOURS,
            idempotency_key_required: DEFAULT_KEY_REQUIRED,
            idempotency_cleanup_interval_secs: DEFAULT_CLEANUP_INTERVAL_SECS,
            idempotency_cleanup_batch_size: DEFAULT_CLEANUP_BATCH_SIZE,
        }
    }
}

impl IdempotencyConfig {
    /// [`Self::idempotency_ttl_hours`] as a duration, to compute a stored response's expiry.
    pub fn ttl(&self) -> chrono::Duration {
        chrono::Duration::hours(i64::from(self.idempotency_ttl_hours))
    }
}

/// Longest accepted key.
pub const MAX_KEY_LEN: usize = 255;
/// `Retry-After` (seconds) for a request whose key is still in flight.
pub const IN_FLIGHT_RETRY_AFTER_SECS: u64 = 1;
/// Pause between two cleanup batches when a sweep finds many expired keys.
const CLEANUP_BATCH_PAUSE: Duration = Duration::from_millis(50);

/// Why an `Idempotency-Key` header is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The header was sent more than once.
    #[error("the Idempotency-Key header must be sent at most once")]
    Repeated,
    /// The value is empty, longer than [`MAX_KEY_LEN`] or not printable ASCII.
    #[error("the Idempotency-Key header must be 1 to 255 printable ASCII characters")]
    Malformed,
}

/// A validated idempotency key together with the operation it is scoped to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopedKey {
    /// Method and path, e.g. `POST /wallets`.
    pub scope: String,
    /// The client's `Idempotency-Key` value, unquoted.
    pub key: String,
}

impl ScopedKey {
    /// The 64-bit advisory-lock id of this key.
    pub fn lock_id(&self) -> i64 {
        let digest = Sha256::new()
            .chain_update(b"wallex-idempotency\n")
            .chain_update(self.scope.as_bytes())
            .chain_update(b"\n")
            .chain_update(self.key.as_bytes())
            .finalize();
        let mut first = [0_u8; 8];
        first.copy_from_slice(&digest[..8]);
        i64::from_be_bytes(first)
    }
}

/// Parses the header values of `Idempotency-Key`: none → `None`; one value of 1–255 printable
/// ASCII characters, bare or as a structured-field string (`"…"`) → the key.
pub fn parse_key_header<'a>(
    mut values: impl Iterator<Item = &'a [u8]>,
) -> Result<Option<String>, KeyError> {
    let Some(raw) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(KeyError::Repeated);
    }
    let inner = match raw {
        [b'"', inner @ .., b'"'] => inner,
        _ => raw,
    };
    let printable = inner.iter().all(|b| (0x20..=0x7e).contains(b));
    if inner.is_empty() || inner.len() > MAX_KEY_LEN || !printable {
        return Err(KeyError::Malformed);
    }
    // Printable ASCII is UTF-8.
    String::from_utf8(inner.to_vec())
        .map(Some)
        .map_err(|_| KeyError::Malformed)
}

/// SHA-256 of the canonical form of a JSON body: object keys sorted, no insignificant whitespace,
/// numbers as written. Two bodies that differ only in formatting or key order are the same request.
pub fn fingerprint(body: &serde_json::Value) -> Vec<u8> {
    // serde_json's map is ordered by key, so serialising the parsed value is canonical.
    let canonical = serde_json::to_vec(body).unwrap_or_default();
    Sha256::digest(&canonical).to_vec()
}

/// A stored response, replayed for later requests with the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// HTTP status code.
    pub status: u16,
    /// Response headers as (name, value) pairs, in order, replayed as they were sent.
    pub headers: Vec<(String, String)>,
    /// The response body, exactly as sent the first time.
    pub body: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct StoredHeader {
    name: String,
    value: String,
}

/// A completed request of a key: the fingerprint of its body and its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedRequest {
    /// [`fingerprint`] of the first request's body: a retry must match it to be replayed.
    pub fingerprint: Vec<u8>,
    /// What the first request was answered with.
    pub response: StoredResponse,
}

/// A key looked up: fingerprint, status, headers and body if it completed (all `NULL` if not).
type LookupRow = (
    Option<Vec<u8>>,
    Option<i16>,
    Option<sqlx::types::Json<Vec<StoredHeader>>>,
    Option<Vec<u8>>,
);

/// The outcome recorded for a key, if it completed and has not expired.
pub async fn find_completed<'e>(
    executor: impl PgExecutor<'e>,
    key: &ScopedKey,
) -> Result<Option<CompletedRequest>, sqlx::Error> {
    // A point look-up (the hot path of every replay): cheaper for PostgreSQL than the array form.
    let row: Option<LookupRow> = sqlx::query_as(
        "SELECT fingerprint, status_code, response_headers, response_body
         FROM idempotency_keys
         WHERE scope = $1 AND idempotency_key = $2 AND expires_at > now()",
    )
    .bind(&key.scope)
    .bind(&key.key)
    .fetch_optional(executor)
    .await?;
    Ok(row.and_then(completed_request))
}

/// [`find_completed`] for many keys with one statement, in input order. A key may complete right
/// after it was looked up: [`store_many`] catches that.
pub async fn find_completed_many<'e>(
    executor: impl PgExecutor<'e>,
    keys: &[&ScopedKey],
) -> Result<Vec<Option<CompletedRequest>>, sqlx::Error> {
    let scopes: Vec<&str> = keys.iter().map(|key| key.scope.as_str()).collect();
    let names: Vec<&str> = keys.iter().map(|key| key.key.as_str()).collect();
    let rows: Vec<LookupRow> =
        sqlx::query_as(
            // LATERAL … LIMIT 1: one primary-key probe per key. A plain join lets the planner
            // hash a sequential scan of the whole table for a batch of keys.
            "SELECT k.fingerprint, k.status_code, k.response_headers, k.response_body
             FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS input (scope, idempotency_key, n)
             LEFT JOIN LATERAL (
                 SELECT fingerprint, status_code, response_headers, response_body
                 FROM idempotency_keys
                 WHERE scope = input.scope AND idempotency_key = input.idempotency_key
                   AND expires_at > now()
                 LIMIT 1) k ON true
             ORDER BY input.n",
        )
        .bind(&scopes)
        .bind(&names)
        .fetch_all(executor)
        .await?;
    Ok(rows.into_iter().map(completed_request).collect())
}

/// The completed request of a looked-up row, if the key had one.
fn completed_request(row: LookupRow) -> Option<CompletedRequest> {
    let (fingerprint, status, headers, body) = row;
    Some(CompletedRequest {
        fingerprint: fingerprint?,
        response: StoredResponse {
            status: u16::try_from(status?).unwrap_or(500),
            headers: headers?
                .0
                .into_iter()
                .map(|header| (header.name, header.value))
                .collect(),
            body: body?,
        },
    })
}

/// Tries to claim many keys for the caller's transaction with one statement: `true` at index `i`
/// if `keys[i]` is now held by it. A key that appears twice is claimed by its first occurrence
/// only (advisory locks are re-entrant within a session, so the second would succeed too).
pub async fn try_claim_many<'e>(
    executor: impl PgExecutor<'e>,
    keys: &[&ScopedKey],
) -> Result<Vec<bool>, sqlx::Error> {
    let ids: Vec<i64> = keys.iter().map(|key| key.lock_id()).collect();
    let claimed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_try_advisory_xact_lock(id)
         FROM UNNEST($1::bigint[]) WITH ORDINALITY AS k (id, n)
         ORDER BY n",
    )
    .bind(&ids)
    .fetch_all(executor)
    .await?;
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    Ok(claimed
        .into_iter()
        .zip(&ids)
        .map(|((claimed,), id)| claimed && seen.insert(*id))
        .collect())
}

/// A completed response to record: one entry of [`store_many`].
#[derive(Debug, Clone, Copy)]
pub struct Completion<'a> {
    /// The key, claimed by the caller's transaction.
    pub key: &'a ScopedKey,
    /// [`fingerprint`] of the request's body.
    pub fingerprint: &'a [u8],
    /// What the request is answered with.
    pub response: &'a StoredResponse,
    /// When the record may be forgotten.
    pub expires_at: DateTime<Utc>,
}

/// Records completed responses in the caller's transaction, with one statement: `true` at index
/// `i` if `completions[i]` was recorded, `false` if a live record of its key exists already (it
/// completed between the caller's first look and its claim; the caller must roll back and answer
/// from that record). An expired record of the same key is replaced: after expiry the key is new
/// again. The keys must be distinct and claimed by the caller.
pub async fn store_many<'e>(
    executor: impl PgExecutor<'e>,
    completions: &[Completion<'_>],
) -> Result<Vec<bool>, sqlx::Error> {
    if completions.is_empty() {
        return Ok(Vec::new());
    }
    let mut scopes = Vec::with_capacity(completions.len());
    let mut keys = Vec::with_capacity(completions.len());
    let mut fingerprints = Vec::with_capacity(completions.len());
    let mut statuses = Vec::with_capacity(completions.len());
    let mut headers = Vec::with_capacity(completions.len());
    let mut bodies = Vec::with_capacity(completions.len());
    let mut expiries = Vec::with_capacity(completions.len());
    for completion in completions {
        scopes.push(completion.key.scope.as_str());
        keys.push(completion.key.key.as_str());
        fingerprints.push(completion.fingerprint);
        statuses.push(i16::try_from(completion.response.status).unwrap_or(i16::MAX));
        headers.push(stored_headers(completion.response));
        bodies.push(completion.response.body.as_slice());
        expiries.push(completion.expires_at);
    }
    let stored: Vec<(String, String)> = sqlx::query_as(
        "INSERT INTO idempotency_keys
             (scope, idempotency_key, fingerprint, status_code, response_headers, response_body, expires_at)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::smallint[], $5::jsonb[], $6::bytea[], $7::timestamptz[])
         ON CONFLICT (scope, idempotency_key) DO UPDATE
             SET fingerprint = EXCLUDED.fingerprint,
                 status_code = EXCLUDED.status_code,
                 response_headers = EXCLUDED.response_headers,
                 response_body = EXCLUDED.response_body,
                 created_at = now(),
                 expires_at = EXCLUDED.expires_at
             WHERE idempotency_keys.expires_at <= now()
         RETURNING scope, idempotency_key",
    )
    .bind(&scopes)
    .bind(&keys)
    .bind(&fingerprints)
    .bind(&statuses)
    .bind(&headers)
    .bind(&bodies)
    .bind(&expiries)
    .fetch_all(executor)
    .await?;
    let stored: std::collections::HashSet<(String, String)> = stored.into_iter().collect();
    Ok(completions
        .iter()
        .map(|completion| {
            stored.contains(&(completion.key.scope.clone(), completion.key.key.clone()))
        })
        .collect())
}

fn stored_headers(response: &StoredResponse) -> sqlx::types::Json<Vec<StoredHeader>> {
    sqlx::types::Json(
        response
            .headers
            .iter()
            .map(|(name, value)| StoredHeader {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
    )
}

/// Deletes expired keys in batches of at most `batch_size` until none are left. Returns how many.
pub async fn delete_expired(pool: &PgPool, batch_size: u32) -> Result<u64, sqlx::Error> {
    let mut deleted = 0;
    loop {
        let batch = sqlx::query(
            "DELETE FROM idempotency_keys WHERE ctid = ANY (ARRAY(
                 SELECT ctid FROM idempotency_keys WHERE expires_at <= now() LIMIT $1))",
        )
        .bind(i64::from(batch_size))
        .execute(pool)
        .await?
        .rows_affected();
        deleted += batch;
        if batch < u64::from(batch_size) {
            return Ok(deleted);
        }
        tokio::time::sleep(CLEANUP_BATCH_PAUSE).await;
    }
}

/// Runs [`delete_expired`] every `interval` until `shutdown` is cancelled.
pub async fn run_cleanup(
    pool: PgPool,
    interval: Duration,
    batch_size: u32,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match delete_expired(&pool, batch_size).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "deleted expired idempotency keys"),
            Err(error) => tracing::warn!(%error, "idempotency key cleanup failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(values: &[&[u8]]) -> Result<Option<String>, KeyError> {
        parse_key_header(values.iter().copied())
    }

    #[test]
    fn keys_are_printable_ascii_up_to_255() {
        assert_eq!(parse(&[]), Ok(None));
        assert_eq!(parse(&[b"abc"]), Ok(Some("abc".into())));
        assert_eq!(parse(&[b"\"abc\""]), Ok(Some("abc".into())));
        assert_eq!(parse(&[b"\"\""]), Err(KeyError::Malformed));
        assert_eq!(parse(&[b"a b"]), Ok(Some("a b".into())));
        assert_eq!(parse(&[&[b'k'; 255]]), Ok(Some("k".repeat(255))));
        assert_eq!(parse(&[&[b'k'; 256]]), Err(KeyError::Malformed));
        assert_eq!(parse(&[b""]), Err(KeyError::Malformed));
        assert_eq!(parse(&[b"a\tb"]), Err(KeyError::Malformed));
        assert_eq!(parse(&["é".as_bytes()]), Err(KeyError::Malformed));
        assert_eq!(parse(&[b"a", b"b"]), Err(KeyError::Repeated));
    }

    #[test]
    fn fingerprint_ignores_formatting_and_key_order() {
        let a: serde_json::Value = serde_json::from_str(r#"{"a":1,"b":"x"}"#).expect("json");
        let b: serde_json::Value =
            serde_json::from_str("{ \"b\": \"x\",\n \"a\": 1 }").expect("json");
        let c: serde_json::Value = serde_json::from_str(r#"{"a":2,"b":"x"}"#).expect("json");
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }

    #[test]
    fn lock_ids_differ_by_scope_and_key() {
        let key = |scope: &str, key: &str| ScopedKey {
            scope: scope.into(),
            key: key.into(),
        };
        assert_ne!(
            key("POST /wallets", "k").lock_id(),
            key("POST /other", "k").lock_id()
        );
        assert_ne!(
            key("POST /wallets", "k").lock_id(),
            key("POST /wallets", "k2").lock_id()
        );
        assert_eq!(
            key("POST /wallets", "k").lock_id(),
            key("POST /wallets", "k").lock_id()
        );
    }
}

//! Redis beside PostgreSQL, for efficiency only: a per-wallet lock around a create, and a cache
//! of completed idempotent responses for replays.
//!
//! Why it exists: the reference design takes a Redis lock around the write and answers replays
//! without touching the database. Correctness stays with PostgreSQL: the wallet's primary key,
//! the idempotency claim and the stored record decide every outcome, so a lock that expires
//! mid-write, a cache that is empty, or a Redis that is down or slow change nothing but speed.
//!
//! - The lock is `SET wallex:lock:wallet:{id} <token> NX PX <ttl>`, released by a
//!   compare-and-delete script, so a holder whose lock expired never deletes its successor's.
//!   A create that finds the lock held waits up to `REDIS_LOCK_WAIT_MS` for it, then goes on
//!   without it.
//! - Round trips: a keyed create asks for its cached response and takes its lock in one script
//!   ([`RedisLockCache::begin`]); a committed batch writes its responses to the cache and releases
//!   its requests' locks in one pipeline ([`RedisLockCache::finish`]). Two round trips per create,
//!   one of them shared by the batch.
//! - A completed response is cached after its transaction committed, with the key's own expiry
//!   (`PXAT` = the record's `expires_at`), so the cache never answers for a key PostgreSQL has not
//!   committed, nor after PostgreSQL's record expired. The cached value names its scope and key,
//!   checked on read.
//! - Every command is bounded by `REDIS_TIMEOUT_MS`. A failure is logged once (and once more when
//!   Redis answers again), counted in `redis_errors_total`, and Redis is left alone for
//!   [`RETRY_AFTER`] so that an outage costs at most one timeout per interval; the connection
//!   manager reconnects by itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::idempotency::{CompletedRequest, ScopedKey, StoredResponse};
use wallex_telemetry::catalogue::{REDIS_ERRORS_TOTAL, REDIS_LOCK_TOTAL, REDIS_REPLAY_CACHE_TOTAL};

/// How long Redis is left alone after a failure before the next command tries it again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often a create polls a wallet lock held by another request.
pub const LOCK_POLL: Duration = Duration::from_millis(5);
/// Prefix of the wallet locks.
const LOCK_PREFIX: &str = "wallex:lock:wallet:";
/// Prefix of the cached responses.
const CACHE_PREFIX: &str = "wallex:idem:";
/// Deletes the lock only if it still holds our token.
const UNLOCK_SCRIPT: &str = r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
else
  return 0
end"#;
/// The cached response of `KEYS[1]` if there is one; otherwise takes lock `KEYS[2]` (token
/// `ARGV[1]`, time to live `ARGV[2]` ms): `{cached or nil, 1 if locked}`.
const BEGIN_SCRIPT: &str = r#"
local cached = redis.call("GET", KEYS[1])
if cached then
  return {cached, 0}
end
if redis.call("SET", KEYS[2], ARGV[1], "NX", "PX", ARGV[2]) then
  return {false, 1}
end
return {false, 0}"#;
/// [`BEGIN_SCRIPT`], sent by digest once Redis knows it.
static BEGIN: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(BEGIN_SCRIPT));

/// Redis port used with a host, by default.
pub const DEFAULT_PORT: u16 = 6379;
/// Upper bound on one Redis command, in milliseconds, by default.
pub const DEFAULT_TIMEOUT_MS: u64 = 50;
/// Lifetime of a wallet lock unless released, in milliseconds, by default.
pub const DEFAULT_LOCK_TTL_MS: u64 = 5_000;
/// How long a create waits for another request's wallet lock, in milliseconds, by default.
pub const DEFAULT_LOCK_WAIT_MS: u64 = 1_000;

/// Where Redis is and how long the write path waits for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// Redis for the wallet lock and the replay cache (`redis://host:port/db`); unset (and no
    /// [`Self::redis_host`]): no Redis, and every create goes to PostgreSQL alone.
    pub redis_url: Option<String>,

    /// The reference design's way to name Redis: its host (used when [`Self::redis_url`] is
    /// unset), so that its deployments' settings work unchanged.
    pub redis_host: Option<String>,

    /// Redis port, with [`Self::redis_host`].
    pub redis_port: u16,

    /// Upper bound on one Redis command, in milliseconds; a slower answer counts as Redis down,
    /// so a slow Redis costs a create at most this much.
    pub redis_timeout_ms: u64,

    /// How long a wallet lock lives unless released, in milliseconds: the lock of a request that
    /// died expires on its own.
    pub redis_lock_ttl_ms: u64,

    /// How long a create waits for another request's lock on the same wallet before going on
    /// without it, in milliseconds (PostgreSQL decides the outcome either way).
    pub redis_lock_wait_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            redis_host: None,
            redis_port: DEFAULT_PORT,
            redis_timeout_ms: DEFAULT_TIMEOUT_MS,
            redis_lock_ttl_ms: DEFAULT_LOCK_TTL_MS,
            redis_lock_wait_ms: DEFAULT_LOCK_WAIT_MS,
        }
    }
}

impl RedisConfig {
    /// The URL to connect to, if Redis is configured.
    pub fn url(&self) -> Option<String> {
        fn non_empty(value: &Option<String>) -> Option<&str> {
            value.as_deref().filter(|s| !s.trim().is_empty())
        }
        non_empty(&self.redis_url).map(str::to_owned).or_else(|| {
            non_empty(&self.redis_host).map(|host| format!("redis://{host}:{}", self.redis_port))
        })
    }
}

/// Errors of setting Redis up (start-up errors; at run time Redis failures are absorbed).
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    /// `REDIS_URL` (or `REDIS_HOST`/`REDIS_PORT`) is not a Redis URL.
    #[error("invalid Redis URL {url:?}: {source}")]
    Url {
        /// The URL as configured.
        url: String,
        /// Why the client refused it.
        source: redis::RedisError,
    },
}

/// A wallet lock this request holds, released when dropped (in the background, so the answer
/// is not delayed; a lock that cannot be released expires).
pub struct WalletLock {
    redis: RedisLockCache,
    key: String,
    token: String,
}

impl std::fmt::Debug for WalletLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalletLock")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl WalletLock {
    /// The compare-and-delete that releases this lock, leaving the lock released as far as
    /// [`Drop`] is concerned (the caller sends it).
    fn take_release(&mut self) -> Option<redis::Cmd> {
        if self.key.is_empty() {
            return None;
        }
        let mut command = redis::cmd("EVAL");
        command
            .arg(UNLOCK_SCRIPT)
            .arg(1)
            .arg(std::mem::take(&mut self.key))
            .arg(std::mem::take(&mut self.token));
        Some(command)
    }
}

impl Drop for WalletLock {
    fn drop(&mut self) {
        // Not released with a batch ([`RedisLockCache::finish`]): released on its own.
        let Some(release) = self.take_release() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let redis = self.redis.clone();
        runtime.spawn(async move {
            let _ = redis.run::<i64>("unlock", &release).await;
        });
    }
}

/// What [`RedisLockCache::begin`] found.
#[derive(Debug, Default)]
pub struct Begun {
    /// The cached response of the request's key (a replay; no lock was taken).
    pub cached: Option<CompletedRequest>,
    /// The wallet's lock, if it was free.
    pub lock: Option<WalletLock>,
    /// Whether another request holds the lock (then [`RedisLockCache::lock`] waits for it).
    pub held: bool,
}

/// The record a replay is answered from, as cached.
#[derive(Serialize, Deserialize)]
struct Cached {
    scope: String,
    key: String,
    fingerprint: Vec<u8>,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A response to cache after its transaction committed.
#[derive(Debug, Clone)]
pub struct Completed {
    /// The request's key.
    pub key: ScopedKey,
    /// Its body's fingerprint.
    pub fingerprint: Vec<u8>,
    /// What it was answered with.
    pub response: StoredResponse,
    /// When its PostgreSQL record expires (the cache entry expires with it).
    pub expires_at: DateTime<Utc>,
}

/// The Redis side of the write path. Cloning is cheap.
#[derive(Clone)]
pub struct RedisLockCache {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    connection: ConnectionManager,
    timeout: Duration,
    lock_ttl: Duration,
    lock_wait: Duration,
    /// Set while Redis is failing: its commands are skipped until then.
    resting_until: Mutex<Option<Instant>>,
    /// Whether the last command failed (so that an outage is logged once, and its end once).
    down: AtomicBool,
}

impl std::fmt::Debug for RedisLockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLockCache")
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisLockCache {
    /// A Redis assistant for `config`, or `None` when Redis is not configured. Connects lazily:
    /// Redis may be down at start-up.
    pub fn from_config(config: &RedisConfig) -> Result<Option<Self>, RedisSetupError> {
        let Some(url) = config.url() else {
            return Ok(None);
        };
        let client = redis::Client::open(url.as_str()).map_err(|source| RedisSetupError::Url {
            url: url.clone(),
            source,
        })?;
        let timeout = Duration::from_millis(config.redis_timeout_ms);
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|source| RedisSetupError::Url { url, source })?;
        Ok(Some(Self {
            inner: std::sync::Arc::new(Inner {
                connection,
                timeout,
                lock_ttl: Duration::from_millis(config.redis_lock_ttl_ms),
                lock_wait: Duration::from_millis(config.redis_lock_wait_ms),
                resting_until: Mutex::new(None),
                down: AtomicBool::new(false),
            }),
        }))
    }

    /// Runs one command within the timeout, keeping the books of failures; `None` when Redis
    /// rests, failed or was too slow.
    async fn run<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        command: &redis::Cmd,
    ) -> Option<T> {
        let mut connection = self.inner.connection.clone();
        self.guarded(
            op,
            async move { command.query_async(&mut connection).await },
        )
        .await
    }

    /// Skips `call` while Redis rests after a failure; otherwise runs it within the timeout and
    /// records a failure (log once, count, rest). `None` when skipped or failed.
    async fn guarded<T>(
        &self,
        op: &'static str,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        let resting = match self.inner.resting_until.lock() {
            Ok(until) => *until,
            Err(poisoned) => *poisoned.into_inner(),
        };
        if resting.is_some_and(|until| Instant::now() < until) {
            return None;
        }
        let error = match tokio::time::timeout(self.inner.timeout, call).await {
            Ok(Ok(value)) => {
                if self.inner.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("Redis answers again; using it for locks and replays");
                }
                return Some(value);
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {} ms", self.inner.timeout.as_millis()),
        };
        metrics::counter!(REDIS_ERRORS_TOTAL, "op" => op).increment(1);
        if !self.inner.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(%error, op, "Redis unavailable; creates and replays go on without it");
        }
        let until = Instant::now() + RETRY_AFTER;
        match self.inner.resting_until.lock() {
            Ok(mut slot) => *slot = Some(until),
            Err(poisoned) => *poisoned.into_inner() = Some(until),
        }
        None
    }

    /// A new lock of `wallet_id`, not taken yet.
    fn new_lock(&self, wallet_id: &str) -> WalletLock {
        WalletLock {
            redis: self.clone(),
            key: format!("{LOCK_PREFIX}{wallet_id}"),
            token: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    fn lock_ttl_ms(&self) -> u64 {
        u64::try_from(self.inner.lock_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// The start of a create, in one round trip: the cached response of `key` (a keyed request),
    /// or else the lock of `wallet_id` if it is free (`held` if not: the caller then waits with
    /// [`Self::lock`]). Without a key, the lock as [`Self::lock`] takes it. Nothing when Redis is
    /// unavailable.
    pub async fn begin(&self, key: Option<&ScopedKey>, wallet_id: &str) -> Begun {
        let Some(key) = key else {
            // Nothing to look up: the lock alone (waiting for another holder as usual).
            return Begun {
                lock: self.lock(wallet_id).await,
                ..Begun::default()
            };
        };
        let lock = self.new_lock(wallet_id);
        let mut invocation = BEGIN.prepare_invoke();
        invocation
            .key(cache_key(key))
            .key(&lock.key)
            .arg(&lock.token)
            .arg(self.lock_ttl_ms());
        let mut connection = self.inner.connection.clone();
        let answer: Option<(Option<Vec<u8>>, i64)> = self
            .guarded("begin", async move {
                invocation.invoke_async(&mut connection).await
            })
            .await;
        let Some((cached, locked)) = answer else {
            metrics::counter!(REDIS_LOCK_TOTAL, "result" => "unavailable").increment(1);
            return Begun::default();
        };
        let cached = decode_cached(key, cached);
        if cached.is_some() {
            return Begun {
                cached,
                ..Begun::default()
            };
        }
        if locked == 1 {
            metrics::counter!(REDIS_LOCK_TOTAL, "result" => "acquired").increment(1);
            return Begun {
                lock: Some(lock),
                ..Begun::default()
            };
        }
        Begun {
            held: true,
            ..Begun::default()
        }
    }

    /// Takes the lock of `wallet_id`, waiting up to the configured time for another holder.
    /// `None` when Redis is unavailable or the wait ran out: the create goes on without it.
    pub async fn lock(&self, wallet_id: &str) -> Option<WalletLock> {
        let lock = self.new_lock(wallet_id);
        let mut command = redis::cmd("SET");
        command
            .arg(&lock.key)
            .arg(&lock.token)
            .arg("NX")
            .arg("PX")
            .arg(self.lock_ttl_ms());
        let deadline = Instant::now() + self.inner.lock_wait;
        let mut waited = false;
        loop {
            match self.run::<Option<String>>("lock", &command).await {
                Some(Some(_)) => {
                    let result = if waited {
                        "acquired_after_wait"
                    } else {
                        "acquired"
                    };
                    metrics::counter!(REDIS_LOCK_TOTAL, "result" => result).increment(1);
                    return Some(lock);
                }
                Some(None) if Instant::now() < deadline => {
                    waited = true;
                    tokio::time::sleep(LOCK_POLL).await;
                }
                Some(None) => {
                    metrics::counter!(REDIS_LOCK_TOTAL, "result" => "wait_expired").increment(1);
                    return None;
                }
                None => {
                    metrics::counter!(REDIS_LOCK_TOTAL, "result" => "unavailable").increment(1);
                    return None;
                }
            }
        }
    }

    /// After a batch: caches the responses whose transaction committed (each until its record
    /// expires) and releases the batch's locks, in one pipeline.
    pub async fn finish(&self, completed: Vec<Completed>, mut locks: Vec<WalletLock>) {
        let mut pipeline = redis::pipe();
        let mut count = 0;
        for release in locks.iter_mut().filter_map(WalletLock::take_release) {
            pipeline.add_command(release).ignore();
            count += 1;
        }
        let now_ms = Utc::now().timestamp_millis();
        for entry in completed {
            let expires_ms = entry.expires_at.timestamp_millis();
            if expires_ms <= now_ms {
                continue;
            }
            let redis_key = cache_key(&entry.key);
            let value = Cached {
                scope: entry.key.scope,
                key: entry.key.key,
                fingerprint: entry.fingerprint,
                status: entry.response.status,
                headers: entry.response.headers,
                body: entry.response.body,
            };
            let Ok(bytes) = serde_json::to_vec(&value) else {
                continue;
            };
            pipeline
                .cmd("SET")
                .arg(redis_key)
                .arg(bytes)
                .arg("PXAT")
                .arg(expires_ms)
                .ignore();
            count += 1;
        }
        if count == 0 {
            return;
        }
        let mut connection = self.inner.connection.clone();
        self.guarded("finish", async move {
            pipeline.query_async::<()>(&mut connection).await
        })
        .await;
    }
}

/// A cached value read for `key`, if it is one of `key`'s (counted as a hit or a miss).
fn decode_cached(key: &ScopedKey, value: Option<Vec<u8>>) -> Option<CompletedRequest> {
    let cached = value
        .and_then(|bytes| serde_json::from_slice::<Cached>(&bytes).ok())
        .filter(|cached| cached.scope == key.scope && cached.key == key.key);
    let result = if cached.is_some() { "hit" } else { "miss" };
    metrics::counter!(REDIS_REPLAY_CACHE_TOTAL, "result" => result).increment(1);
    cached.map(|cached| CompletedRequest {
        fingerprint: cached.fingerprint,
        response: StoredResponse {
            status: cached.status,
            headers: cached.headers,
            body: cached.body,
        },
    })
}

/// The Redis key of a cached response: a digest of scope and key, so any client key fits.
fn cache_key(key: &ScopedKey) -> String {
    let digest = Sha256::new()
        .chain_update(key.scope.as_bytes())
        .chain_update(b"\n")
        .chain_update(key.key.as_bytes())
        .finalize();
    format!("{CACHE_PREFIX}{}", hex::encode(digest))
}

//! A PostgreSQL database of its own for each test, and counts over it.

use sqlx::{Connection, PgConnection, PgPool};

/// Server URL of the test cluster's maintenance database; override with WALLEX_TEST_ADMIN_URL.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn admin_url() -> String {
    std::env::var("WALLEX_TEST_ADMIN_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// A database of its own for one test, dropped when the value is dropped.
pub struct TestDb {
    /// The database's name (`wallex_test_<uuid>`).
    pub name: String,
    /// Its connection URL.
    pub url: String,
}

impl TestDb {
    /// Creates an empty database on the test cluster (`WALLEX_TEST_ADMIN_URL`).
    pub async fn new() -> TestDb {
        let name = format!("wallex_test_{}", uuid::Uuid::new_v4().simple());
        let admin = admin_url();
        let mut conn = PgConnection::connect(&admin)
            .await
            .expect("connect to the test PostgreSQL (see README: Tests)");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let base = admin
            .rsplit_once('/')
            .map(|(base, _)| base)
            .unwrap_or(&admin);
        TestDb {
            url: format!("{base}/{name}"),
            name,
        }
    }

    /// A database with the schema applied.
    pub async fn migrated() -> TestDb {
        let db = TestDb::new().await;
        let pool = db.pool().await;
        wallex_core::db::MIGRATOR.run(&pool).await.expect("migrate");
        pool.close().await;
        db
    }

    /// A pool of up to 8 connections to it.
    pub async fn pool(&self) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(&self.url)
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = admin_url();
        // Drop runs inside a tokio runtime; use a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&mut conn)
                            .await;
                }
            });
        })
        .join();
    }
}

/// A migrated test database with a pool, for tests that run parts of wallex in the test
/// process. The database is dropped by [`PooledDb::drop_db`], or with the value if the test
/// panics first.
pub struct PooledDb {
    db: TestDb,
    /// The database's connection URL.
    pub url: String,
    /// A pool of up to 8 connections to it.
    pub pool: PgPool,
}

impl PooledDb {
    /// A new migrated database and its pool.
    pub async fn new() -> PooledDb {
        let db = TestDb::migrated().await;
        let pool = db.pool().await;
        PooledDb {
            url: db.url.clone(),
            pool,
            db,
        }
    }

    /// Closes the pool and drops the database.
    pub async fn drop_db(self) {
        self.pool.close().await;
        drop(self.db);
    }
}

/// `SELECT count(*) …`.
pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(pool).await.expect(sql);
    n
}

/// Counts of (wallets, events, outbox rows, idempotency keys).
pub async fn row_counts(pool: &PgPool) -> (i64, i64, i64, i64) {
    (
        count(pool, "SELECT count(*) FROM wallets").await,
        count(pool, "SELECT count(*) FROM events").await,
        count(pool, "SELECT count(*) FROM outbox").await,
        count(pool, "SELECT count(*) FROM idempotency_keys").await,
    )
}

//! The write model against a read model of it, row by row (the reference design's
//! `detectDataDrift`).
//!
//! Why it exists: a read model is derived from the events; when it no longer matches the wallets
//! the write path committed (a projection bug, a hand-edited row, a restore), an operator must be
//! told which rows, not only that something is wrong. This is the one query that reads `wallets`
//! beside another relation. The other relation and its column names are the caller's
//! ([`ReadModelShape`]): this crate knows no projection.
//!
//! How: in chunks of [`ReadModelCheck::chunk`] wallet ids, each chunk one read-only repeatable-read
//! transaction of two statements: the chunk's last id, then a `FULL OUTER JOIN` of both sides over
//! that id range that returns only the rows that differ (`IS DISTINCT FROM` on every compared
//! column). The comparison runs in PostgreSQL; only differences travel.
//!
//! What is not drift: a wallet written after the `horizon` (the read model may not have applied
//! it yet; counted as `in_flight`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// Most wallet ids one chunk compares when the caller asks for more.
pub const MAX_CHUNK: i64 = 100_000;

/// Where a read model of the wallets is, and which of its columns hold which snapshot field.
#[derive(Debug, Clone, Copy)]
pub struct ReadModelShape<'a> {
    /// Schema of the relation (a projection's stable view schema, e.g. `projection_read_model`).
    pub schema: &'a str,
    /// The relation (table or view).
    pub relation: &'a str,
    /// Its column holding the wallet id.
    pub id: &'a str,
    /// Pairs of (snapshot column of `wallets`, its column in the read model), compared in order.
    pub columns: &'a [(&'a str, &'a str)],
}

/// How a row differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowDrift {
    /// The wallet exists; the read model has no row for it.
    Missing,
    /// The read model has a row for a wallet that does not exist.
    Extra,
    /// Both exist with different values.
    Different,
}

impl RowDrift {
    /// `missing`, `extra` or `different`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Extra => "extra",
            Self::Different => "different",
        }
    }
}

/// One row that differs, with both sides' values as text (`None`: the side has no row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftedRow {
    /// The table the row is in, when a check compares several (a projection's drift check);
    /// `None` for the read-model check's one table.
    pub table: Option<String>,
    /// The row's key: the wallet id, or `column=value` pairs of a primary key.
    pub id: String,
    /// How it differs.
    pub drift: RowDrift,
    /// Per compared column (the shape's order): (column, the source of truth's value — the write
    /// model's, or the log replayed —, the checked side's value); for `Different`, only the
    /// columns that differ.
    pub columns: Vec<(String, Option<String>, Option<String>)>,
}

/// What a whole check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadModelReport {
    /// Wallets compared (written before the horizon).
    pub checked: i64,
    /// Wallets written after the horizon, not compared.
    pub in_flight: i64,
    /// Wallets without a read-model row.
    pub missing: i64,
    /// Read-model rows without a wallet.
    pub extra: i64,
    /// Rows on both sides that differ.
    pub different: i64,
    /// The first differing rows in id order, at most the sample size asked for.
    pub sample: Vec<DriftedRow>,
    /// Chunks (transactions) the check took.
    pub chunks: i64,
}

impl ReadModelReport {
    /// Whether anything differs.
    pub fn drifted(&self) -> bool {
        self.missing + self.extra + self.different > 0
    }
}

/// A check of the write model against one read model.
#[derive(Debug, Clone, Copy)]
pub struct ReadModelCheck<'a> {
    /// The read model.
    pub shape: ReadModelShape<'a>,
    /// Wallet ids per chunk (clamped to 1..=[`MAX_CHUNK`]).
    pub chunk: i64,
    /// Most differing rows kept in the report's sample.
    pub sample: usize,
    /// Wallets written at or after this instant are not compared (see the module docs).
    pub horizon: DateTime<Utc>,
}

/// Why a check could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReadModelCheckError {
    /// The database refused or could not be reached (or the read model does not exist).
    #[error("read model check: {0}")]
    Database(#[from] sqlx::Error),
}

fn quoted(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// One differing row as the diff statement returns it.
#[derive(sqlx::FromRow)]
struct DiffRow {
    id: String,
    in_write: bool,
    in_read: bool,
    write_values: Vec<Option<String>>,
    read_values: Vec<Option<String>>,
    differs: Vec<bool>,
}

impl ReadModelCheck<'_> {
    /// The diff statement of a chunk: `$1` lower id (exclusive), `$2` upper id (inclusive, `NULL`
    /// for no bound), `$3` the horizon.
    fn diff_sql(&self) -> String {
        let shape = &self.shape;
        let relation = format!("{}.{}", quoted(shape.schema), quoted(shape.relation));
        let id = quoted(shape.id);
        let write: Vec<String> = shape
            .columns
            .iter()
            .map(|(w, _)| format!("w.{}", quoted(w)))
            .collect();
        let read: Vec<String> = shape
            .columns
            .iter()
            .map(|(_, r)| format!("r.{}", quoted(r)))
            .collect();
        let as_text = |cols: &[String]| {
            cols.iter()
                .map(|c| format!("{c}::text"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let differs = write
            .iter()
            .zip(&read)
            .map(|(w, r)| format!("{w} IS DISTINCT FROM {r}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "SELECT coalesce(w.id, r.{id}) AS id,
                    w.id IS NOT NULL AS in_write,
                    r.{id} IS NOT NULL AS in_read,
                    ARRAY[{write_text}] AS write_values,
                    ARRAY[{read_text}] AS read_values,
                    ARRAY[{differs}] AS differs
             FROM (SELECT * FROM wallets
                   WHERE id > $1 AND ($2::text IS NULL OR id <= $2) AND updated_at < $3) w
             FULL OUTER JOIN
                  (SELECT * FROM {relation}
                   WHERE {id} > $1 AND ($2::text IS NULL OR {id} <= $2)
                     AND {id} NOT IN (SELECT id FROM wallets
                                      WHERE id > $1 AND ($2::text IS NULL OR id <= $2)
                                        AND updated_at >= $3)) r
               ON w.id = r.{id}
             WHERE w.id IS NULL OR r.{id} IS NULL
                OR ({write_row}) IS DISTINCT FROM ({read_row})
             ORDER BY 1",
            write_text = as_text(&write),
            read_text = as_text(&read),
            write_row = write.join(", "),
            read_row = read.join(", "),
        )
    }

    /// Runs the check over every wallet.
    pub async fn run(&self, pool: &PgPool) -> Result<ReadModelReport, ReadModelCheckError> {
        let chunk = self.chunk.clamp(1, MAX_CHUNK);
        let diff_sql = self.diff_sql();
        let mut report = ReadModelReport::default();
        let mut after = String::new();
        loop {
            let mut tx = pool.begin().await?;
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
            // The chunk: the next `chunk` wallet ids; the last chunk is open-ended, so that
            // read-model rows after the last wallet are compared too.
            let (upper, ids, in_flight): (Option<String>, i64, i64) = sqlx::query_as(
                "SELECT max(id), count(*), count(*) FILTER (WHERE updated_at >= $3)
                 FROM (SELECT id, updated_at FROM wallets WHERE id > $1 ORDER BY id LIMIT $2) c",
            )
            .bind(&after)
            .bind(chunk)
            .bind(self.horizon)
            .fetch_one(&mut *tx)
            .await?;
            let last = ids < chunk;
            let bound = if last { None } else { upper.clone() };
            let rows: Vec<DiffRow> = sqlx::query_as(&diff_sql)
                .bind(&after)
                .bind(&bound)
                .bind(self.horizon)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            report.chunks += 1;
            report.checked += ids - in_flight;
            report.in_flight += in_flight;
            for row in rows {
                let drift = match (row.in_write, row.in_read) {
                    (true, false) => RowDrift::Missing,
                    (false, true) => RowDrift::Extra,
                    _ => RowDrift::Different,
                };
                match drift {
                    RowDrift::Missing => report.missing += 1,
                    RowDrift::Extra => report.extra += 1,
                    RowDrift::Different => report.different += 1,
                }
                if report.sample.len() < self.sample {
                    report.sample.push(self.drifted_row(row, drift));
                }
            }
            tracing::debug!(
                checked = report.checked,
                chunks = report.chunks,
                "read-model check progress"
            );
            match upper {
                Some(upper) if !last => after = upper,
                _ => return Ok(report),
            }
        }
    }

    fn drifted_row(&self, row: DiffRow, drift: RowDrift) -> DriftedRow {
        let columns = self
            .shape
            .columns
            .iter()
            .enumerate()
            .filter(|(i, _)| drift != RowDrift::Different || row.differs.get(*i) == Some(&true))
            .map(|(i, (write, _))| {
                (
                    (*write).to_owned(),
                    row.write_values.get(i).cloned().flatten(),
                    row.read_values.get(i).cloned().flatten(),
                )
            })
            .collect();
        DriftedRow {
            table: None,
            id: row.id,
            drift,
            columns,
        }
    }
}

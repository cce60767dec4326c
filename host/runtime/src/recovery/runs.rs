//! The history of recovery checks. Owns `recovery_runs`.
//!
//! Why it exists: a check's report must outlive the request that asked for it (the CLI may have
//! gone away, another instance may be asked), and an operator wants to see what the last checks
//! found, not only the last one. The sample of differing rows is stored as JSON, the one place
//! this module turns the typed report into JSON.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;

use wallex_core::write_path::read_model_check::{DriftedRow, ReadModelReport, RowDrift};

/// What kind of check a run was.
pub const READ_MODEL_CHECK: &str = "read-model-check";

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Nothing differs.
    Clean,
    /// Rows differ (see the counts and the sample).
    Drift,
    /// The check could not finish (see the error).
    Failed,
}

impl RunOutcome {
    /// `clean`, `drift` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Drift => "drift",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "clean" => Self::Clean,
            "drift" => Self::Drift,
            _ => Self::Failed,
        }
    }
}

/// One stored run.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// The run's number; later runs have higher ones.
    pub id: i64,
    /// What was checked ([`READ_MODEL_CHECK`]).
    pub kind: String,
    /// The projection checked, if the check concerns one.
    pub projection: Option<String>,
    /// Who asked (an operator, or `recovery` for the schedule).
    pub requested_by: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// How it ended.
    pub outcome: RunOutcome,
    /// What it found (empty when it failed).
    pub report: ReadModelReport,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// A sampled row as stored.
#[derive(Debug, Serialize, Deserialize)]
struct StoredRow {
    id: String,
    drift: String,
    columns: Vec<StoredColumn>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredColumn {
    column: String,
    write: Option<String>,
    read: Option<String>,
}

fn to_json(sample: &[DriftedRow]) -> serde_json::Value {
    let rows: Vec<StoredRow> = sample
        .iter()
        .map(|row| StoredRow {
            id: row.id.clone(),
            drift: row.drift.as_str().to_owned(),
            columns: row
                .columns
                .iter()
                .map(|(column, write, read)| StoredColumn {
                    column: column.clone(),
                    write: write.clone(),
                    read: read.clone(),
                })
                .collect(),
        })
        .collect();
    serde_json::to_value(rows).unwrap_or_else(|_| serde_json::Value::Array(Vec::new()))
}

fn from_json(value: serde_json::Value) -> Vec<DriftedRow> {
    let rows: Vec<StoredRow> = serde_json::from_value(value).unwrap_or_default();
    rows.into_iter()
        .map(|row| DriftedRow {
            id: row.id,
            drift: match row.drift.as_str() {
                "missing" => RowDrift::Missing,
                "extra" => RowDrift::Extra,
                _ => RowDrift::Different,
            },
            columns: row
                .columns
                .into_iter()
                .map(|c| (c.column, c.write, c.read))
                .collect(),
        })
        .collect()
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    kind: String,
    projection: Option<String>,
    requested_by: String,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    outcome: String,
    checked: i64,
    in_flight: i64,
    missing: i64,
    extra: i64,
    different: i64,
    sample: serde_json::Value,
    error: Option<String>,
}

impl Row {
    fn into_run(self) -> Run {
        Run {
            id: self.id,
            kind: self.kind,
            projection: self.projection,
            requested_by: self.requested_by,
            started_at: self.started_at,
            finished_at: self.finished_at,
            outcome: RunOutcome::parse(&self.outcome),
            report: ReadModelReport {
                checked: self.checked,
                in_flight: self.in_flight,
                missing: self.missing,
                extra: self.extra,
                different: self.different,
                sample: from_json(self.sample),
                chunks: 0,
            },
            error: self.error,
        }
    }
}

const SELECT: &str = "SELECT id, kind, projection, requested_by, started_at, finished_at, outcome,
                             checked, in_flight, missing, extra, different, sample, error
                      FROM recovery_runs";

/// What a finished run recorded.
#[derive(Debug)]
pub struct NewRun<'a> {
    /// [`READ_MODEL_CHECK`].
    pub kind: &'a str,
    /// The projection checked, if one.
    pub projection: Option<&'a str>,
    /// Who asked.
    pub requested_by: &'a str,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// What it found, or why it failed.
    pub result: Result<&'a ReadModelReport, String>,
}

/// Stores a finished run; returns it as stored.
pub async fn record<'e>(
    executor: impl PgExecutor<'e>,
    run: &NewRun<'_>,
) -> Result<Run, sqlx::Error> {
    let empty = ReadModelReport::default();
    let (outcome, report, error) = match &run.result {
        Ok(report) if report.drifted() => (RunOutcome::Drift, *report, None),
        Ok(report) => (RunOutcome::Clean, *report, None),
        Err(error) => (RunOutcome::Failed, &empty, Some(error.as_str())),
    };
    let row: Row = sqlx::query_as(&format!(
        "WITH inserted AS (
           INSERT INTO recovery_runs (kind, projection, requested_by, started_at, outcome,
                                      checked, in_flight, missing, extra, different, sample, error)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
           RETURNING *)
         {}",
        SELECT.replace("FROM recovery_runs", "FROM inserted")
    ))
    .bind(run.kind)
    .bind(run.projection)
    .bind(run.requested_by)
    .bind(run.started_at)
    .bind(outcome.as_str())
    .bind(report.checked)
    .bind(report.in_flight)
    .bind(report.missing)
    .bind(report.extra)
    .bind(report.different)
    .bind(to_json(&report.sample))
    .bind(error)
    .fetch_one(executor)
    .await?;
    let mut stored = row.into_run();
    stored.report.chunks = report.chunks;
    Ok(stored)
}

/// The latest runs, newest first, optionally of one kind.
pub async fn recent<'e>(
    executor: impl PgExecutor<'e>,
    kind: Option<&str>,
    limit: i64,
) -> Result<Vec<Run>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "{SELECT} WHERE $1::text IS NULL OR kind = $1 ORDER BY id DESC LIMIT $2"
    ))
    .bind(kind)
    .bind(limit)
    .fetch_all(executor)
    .await?;
    Ok(rows.into_iter().map(Row::into_run).collect())
}

/// One run by number.
pub async fn get<'e>(executor: impl PgExecutor<'e>, id: i64) -> Result<Option<Run>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!("{SELECT} WHERE id = $1"))
        .bind(id)
        .fetch_optional(executor)
        .await?;
    Ok(row.map(Row::into_run))
}

//! The history of recovery checks. Owns `recovery_runs`.
//!
//! Why it exists: a check's report must outlive the request that asked for it (the CLI may have
//! gone away, another instance may be asked), and an operator wants to see what the last checks
//! found, not only the last one. The sample of differing rows is stored as JSON, the one place
//! this module turns the typed report into JSON.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;

use wallex_core::read_model_check::{DriftedRow, ReadModelReport, RowDrift};

/// What kind of check a run was: the write model against the read model.
pub const READ_MODEL_CHECK: &str = "read-model-check";
/// A projection's tables against a replay of the log.
pub const DRIFT_CHECK: &str = "drift-check";

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Still running (a drift check replays the log, then compares).
    Running,
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
            Self::Running => "running",
            Self::Clean => "clean",
            Self::Drift => "drift",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "running" => Self::Running,
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
    /// When it ended (`None` while it runs).
    pub finished_at: Option<DateTime<Utc>>,
    /// How it ended.
    pub outcome: RunOutcome,
    /// What it found (empty when it failed): the counts over every table and the first differing
    /// rows. For a drift check, `checked` counts the rows compared.
    pub report: ReadModelReport,
    /// A drift check's counts per table.
    pub tables: Vec<TableDrift>,
    /// A drift check: outbox rows when it started (the measure of its progress).
    pub events_total: i64,
    /// A drift check: whether to keep the shadow (`None`: only when rows differ).
    pub keep_shadow: Option<bool>,
    /// A drift check: the shadow namespace, while it is kept for a repair.
    pub shadow: Option<String>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// A running drift check: how far it is (not stored; read from its checkpoints).
    pub progress: Option<DriftProgress>,
}

/// Where a running drift check is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftPhase {
    /// Its shadow is being filled from the log.
    Replaying,
    /// Its shadow stands at the cut and is being compared.
    Comparing,
}

impl DriftPhase {
    /// `replaying` or `comparing`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replaying => "replaying",
            Self::Comparing => "comparing",
        }
    }
}

/// How far a running drift check is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriftProgress {
    /// What it does now.
    pub phase: DriftPhase,
    /// Events replayed into its shadow.
    pub events_replayed: i64,
    /// Events it will replay, as far as known (the log when it started; the cut moves on).
    pub events_total: i64,
}

/// What a drift check found in one table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDrift {
    /// The table, as the projection declares it.
    pub table: String,
    /// Rows compared (either side).
    pub compared: i64,
    /// Rows the replay has and the live table lacks.
    pub missing: i64,
    /// Rows the live table has and the replay lacks.
    pub extra: i64,
    /// Rows on both sides that differ.
    pub different: i64,
}

/// A sampled row as stored.
#[derive(Debug, Serialize, Deserialize)]
struct StoredRow {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    table: Option<String>,
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
            table: row.table.clone(),
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
            table: row.table,
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
    finished_at: Option<DateTime<Utc>>,
    outcome: String,
    checked: i64,
    in_flight: i64,
    missing: i64,
    extra: i64,
    different: i64,
    sample: serde_json::Value,
    error: Option<String>,
    events_total: i64,
    tables: serde_json::Value,
    shadow: Option<String>,
    keep_shadow: Option<bool>,
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
            tables: serde_json::from_value(self.tables).unwrap_or_default(),
            events_total: self.events_total,
            keep_shadow: self.keep_shadow,
            shadow: self.shadow,
            error: self.error,
            progress: None,
        }
    }
}

const SELECT: &str = "SELECT id, kind, projection, requested_by, started_at, finished_at, outcome,
                             checked, in_flight, missing, extra, different, sample, error,
                             events_total, tables, shadow, keep_shadow
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

/// When the last run of `kind` on `projection` started.
pub async fn last_started<'e>(
    executor: impl PgExecutor<'e>,
    kind: &str,
    projection: &str,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT max(started_at) FROM recovery_runs WHERE kind = $1 AND projection = $2",
    )
    .bind(kind)
    .bind(projection)
    .fetch_one(executor)
    .await
}

/// Stores a drift check as it starts (`running`); returns its number.
pub async fn start<'e>(
    executor: impl PgExecutor<'e>,
    projection: &str,
    requested_by: &str,
    keep_shadow: Option<bool>,
    events_total: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO recovery_runs (kind, projection, requested_by, started_at, finished_at,
                                    outcome, events_total, keep_shadow)
         VALUES ($1, $2, $3, now(), NULL, 'running', $4, $5)
         RETURNING id",
    )
    .bind(DRIFT_CHECK)
    .bind(projection)
    .bind(requested_by)
    .bind(events_total)
    .bind(keep_shadow)
    .fetch_one(executor)
    .await
}

/// Records that a drift check reached its cut and compares.
pub async fn comparing<'e>(executor: impl PgExecutor<'e>, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE recovery_runs SET compare_started_at = now() WHERE id = $1")
        .bind(id)
        .execute(executor)
        .await?;
    Ok(())
}

/// Completes a running drift check with what it found, or why it failed; `shadow` is the
/// namespace kept for a repair. Returns whether the run was still running (an abandoned run is
/// left as it is).
pub async fn finish<'e>(
    executor: impl PgExecutor<'e>,
    id: i64,
    result: Result<(&ReadModelReport, &[TableDrift]), &str>,
    shadow: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let empty = ReadModelReport::default();
    let (outcome, report, tables, error) = match result {
        Ok((report, tables)) if report.drifted() => (RunOutcome::Drift, report, tables, None),
        Ok((report, tables)) => (RunOutcome::Clean, report, tables, None),
        Err(error) => (RunOutcome::Failed, &empty, &[][..], Some(error)),
    };
    let tables = serde_json::to_value(tables).unwrap_or_else(|_| serde_json::json!([]));
    let updated =
        sqlx::query(
            "UPDATE recovery_runs
         SET outcome = $2, finished_at = now(), checked = $3, missing = $4, extra = $5,
             different = $6, sample = $7, tables = $8, shadow = $9, error = $10
         WHERE id = $1 AND outcome = 'running'",
        )
        .bind(id)
        .bind(outcome.as_str())
        .bind(report.checked)
        .bind(report.missing)
        .bind(report.extra)
        .bind(report.different)
        .bind(to_json(&report.sample))
        .bind(tables)
        .bind(shadow)
        .bind(error.map(|e| {
            wallex_sandbox::guest_text::clip(e, wallex_sandbox::guest_text::MAX_ERROR_BYTES)
        }))
        .execute(executor)
        .await?
        .rows_affected();
    Ok(updated == 1)
}

/// A drift check's shadow went (dropped, replaced, or taken up by a repair): a running check
/// fails with `reason`, a finished one no longer lists the shadow.
pub async fn shadow_gone<'e>(
    executor: impl PgExecutor<'e>,
    id: i64,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE recovery_runs
         SET shadow = NULL,
             outcome = CASE WHEN outcome = 'running' THEN 'failed' ELSE outcome END,
             error = CASE WHEN outcome = 'running' THEN $2 ELSE error END,
             finished_at = COALESCE(finished_at, now())
         WHERE id = $1",
    )
    .bind(id)
    .bind(reason)
    .execute(executor)
    .await?;
    Ok(())
}

/// Running drift checks not in `alive` (still replaying) that started comparing — or started,
/// if they never reached their cut — before `before`: their shadow or the instance comparing it
/// went. Failed with `reason`; returns how many.
pub async fn fail_abandoned<'e>(
    executor: impl PgExecutor<'e>,
    alive: &[i64],
    before: DateTime<Utc>,
    reason: &str,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE recovery_runs SET outcome = 'failed', finished_at = now(), error = $3
         WHERE kind = $4 AND outcome = 'running' AND id <> ALL($1)
           AND COALESCE(compare_started_at, started_at) < $2",
    )
    .bind(alive)
    .bind(before)
    .bind(reason)
    .bind(DRIFT_CHECK)
    .execute(executor)
    .await?
    .rows_affected())
}

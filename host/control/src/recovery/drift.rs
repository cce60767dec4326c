//! Drift detection for any projection, and its whole-projection repair.
//!
//! Why it exists: a projection's tables are a function of the log and the live component. When
//! they are not — a component bug fixed by an in-place deploy, a hand-edited row, a restore from
//! an old backup — nothing fails; readers just get wrong answers. A drift check asks the only
//! question that needs no knowledge of the projection's meaning: do the live tables hold what
//! replaying the log through the live component gives?
//!
//! How, in order:
//! 1. **Replay** ([`Projections::start_drift`]): the rebuild machinery fills a shadow namespace
//!    (`…_b<n>`) from the start of the log with the live version, marked as a drift shadow
//!    (`projection_rebuilds.purpose = 'drift'`). The worker holding the lease runs it as
//!    [`wallex_runtime::worker::Track::Shadow`]: never past the live checkpoint.
//! 2. **Cut** (`Projections::drift_cut`): once the shadow stands at the live checkpoint, the
//!    worker (which is the only one moving the live checkpoint) holds at that batch boundary just
//!    long enough to open a repeatable-read snapshot; in it, both checkpoints must be equal, so
//!    both sets of tables reflect exactly the same events. The shadow's checkpoint is renamed
//!    (`#shadow`), so no batch can move it any more, and the worker goes on.
//! 3. **Compare** ([`compare`]), in that snapshot, off the worker: per declared table, a
//!    `FULL OUTER JOIN` on the primary key with `ROW(..) IS DISTINCT FROM`, counting rows missing,
//!    extra and different, then sampling at most [`super::REPORT_SAMPLE`] of them with the
//!    columns that differ.
//! 4. **Report**: the run (`recovery_runs`) is completed, audited and counted; the shadow is
//!    kept for a repair (by default only when rows differ) or dropped.
//!
//! Repair of a whole projection ([`Projections::repair_projection`]): a kept shadow of the live
//! version becomes a rebuild — it catches up from its cut and is cut over like any blue/green
//! rebuild (immediately when nothing moved since); without one, a blue/green rebuild starts.
//!
//! Architecture invariant: a drift check never changes the live tables, and its comparison only
//! ever sees the live and shadow tables at the same checkpoint. API boundary: it knows no
//! projection's meaning — only declared tables, keys and columns.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlx::postgres::PgRow;
use sqlx::{Connection, PgConnection, Row};
use tracing::Instrument;

use super::REPORT_SAMPLE;
use crate::outcome::{live_deployment, OperationError, SYSTEM_ACTOR};
use crate::rebuild::drop_rebuild;
use crate::recovery_runs::{self as runs, TableDrift};
use crate::Projections;
use wallex_core::read_model_check::{DriftedRow, ReadModelReport, RowDrift};
use wallex_runtime::checkpoint;
use wallex_runtime::registry::{self, DeploymentState};
use wallex_runtime::schema::{quote, ProjectionSchema};
use wallex_runtime::worker::{Active, Projector};
use wallex_telemetry::catalogue::RECOVERY_RUNS_TOTAL;

/// Longest a drift check's comparison may take (its snapshot is held that long).
pub const COMPARE_TIMEOUT: Duration = Duration::from_secs(600);

/// What a whole-projection repair did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectionRepair {
    /// The kept shadow of drift check `run` catches up and is cut over.
    Shadow {
        /// The drift check whose shadow is used.
        run: i64,
    },
    /// No usable shadow: a blue/green rebuild from the start of the log started.
    Rebuild,
}

impl Projections {
    /// Starts a drift check of `name` (see the module docs); returns the run, `running`.
    /// `keep_shadow`: keep the replayed tables afterwards (`None`: only when rows differ).
    pub async fn start_drift(
        &self,
        name: &str,
        keep_shadow: Option<bool>,
        actor: &str,
    ) -> Result<runs::Run, OperationError> {
        let pool = self.pool();
        let mut conn = pool.acquire().await?;
        let mut tx = conn.begin().await?;
        registry::lock(&mut tx).await?;
        let current = live_deployment(&mut tx, name).await?;
        if current.state() == DeploymentState::Paused {
            return Err(OperationError::Conflict(format!(
                "{name} is paused: its worker would not replay the log; resume it first"
            )));
        }
        self.rebuild_live(&mut tx, &current, actor).await?;
        // The outbox's size as the rebuild row counted it: the measure of the replay's progress.
        let total = registry::rebuild(&mut tx, name)
            .await?
            .map_or(0, |r| r.events_total);
        let run = runs::start(&mut *tx, name, actor, keep_shadow, total).await?;
        registry::set_drift(&mut tx, name, run).await?;
        registry::notify(&mut tx, name).await?;
        registry::record_action(
            &mut tx,
            actor,
            runs::DRIFT_CHECK,
            Some(name),
            "started",
            &json!({ "run": run, "sha256": current.sha256, "events": total }),
        )
        .await?;
        tx.commit().await?;
        tracing::info!(
            projection = name,
            run,
            events = total,
            "drift check started"
        );
        self.reconcile_one(name).await?;
        runs::get(pool, run)
            .await?
            .ok_or_else(|| OperationError::NotFound(format!("run {run}")))
    }

    /// The consistent cut of a drift check (see the module docs), on the worker's lease
    /// connection: the worker waits only for the snapshot and the hold to commit.
    pub(crate) async fn drift_cut(
        &self,
        conn: &mut PgConnection,
        projector: &Projector,
        target: &Active,
    ) -> Result<(), OperationError> {
        let name = projector.name();
        let live_schema = projector.active().schema;
        let mut snapshot = open_snapshot(self.pool()).await?;
        // The snapshot is taken by its first query: these reads fix it.
        let live = checkpoint::read_in(&mut snapshot, name).await?;
        let shadow = checkpoint::read_in(&mut snapshot, &checkpoint::rebuild_key(name)).await?;
        let (Some(live), Some(shadow)) = (live, shadow) else {
            return Err(OperationError::Conflict(format!(
                "the drift check of {name} lost a checkpoint"
            )));
        };
        if shadow.cursor > live.cursor {
            // The live checkpoint went back (an operator's reset): the cut cannot be reached.
            drop(snapshot);
            self.fail_rebuild(
                conn,
                name,
                "the live checkpoint moved back behind the replay (a reset)",
            )
            .await?;
            return Ok(());
        }
        if live.cursor != shadow.cursor
            || live.namespace != live_schema.namespace
            || shadow.namespace != target.schema.namespace
        {
            return Err(OperationError::Conflict(format!(
                "the shadow of {name} is not at the live checkpoint yet"
            )));
        }
        let mut tx = conn.begin().await?;
        registry::lock(&mut tx).await?;
        let rebuild = registry::rebuild(&mut tx, name)
            .await?
            .filter(|r| r.is_drift() && r.in_progress() && r.namespace == target.schema.namespace)
            .ok_or_else(|| {
                OperationError::Conflict(format!("the drift check of {name} was replaced"))
            })?;
        let run = rebuild.drift_run.unwrap_or_default();
        checkpoint::rename(
            &mut tx,
            &checkpoint::rebuild_key(name),
            &checkpoint::shadow_key(name),
        )
        .await?;
        registry::hold_shadow(&mut tx, name).await?;
        registry::bump(&mut tx, name).await?;
        runs::comparing(&mut *tx, run).await?;
        tx.commit().await?;
        tracing::info!(
            projection = name,
            run,
            position = live.cursor.position,
            events = live.events_applied,
            "drift check at its cut; comparing"
        );
        let projections = self.clone();
        let name = name.to_owned();
        let shadow_schema = Arc::clone(&target.schema);
        let span = tracing::info_span!("recovery.drift_compare", projection = %name, run);
        self.inner.tasks.spawn(
            async move {
                // Tests make the comparison slow while the live tables move on.
                wallex_core::failpoint::hit("drift-compare").await;
                let result = compare(&mut snapshot, &live_schema, &shadow_schema).await;
                // Read-only: closing the connection ends the snapshot and changes nothing.
                drop(snapshot);
                if let Err(error) = projections.finish_drift(&name, run, result).await {
                    tracing::warn!(%error, "cannot record the drift check");
                }
            }
            .instrument(span),
        );
        self.reconcile_one(projector.name()).await?;
        Ok(())
    }

    /// Completes run `run`: stores what the comparison found, keeps or drops the shadow, audits.
    async fn finish_drift(
        &self,
        name: &str,
        run: i64,
        result: Result<(ReadModelReport, Vec<TableDrift>), sqlx::Error>,
    ) -> Result<(), OperationError> {
        let pool = self.pool();
        let stored = runs::get(pool, run).await?;
        let keep_asked = stored.as_ref().and_then(|r| r.keep_shadow);
        let requested_by = stored
            .as_ref()
            .map_or_else(|| SYSTEM_ACTOR.to_owned(), |r| r.requested_by.clone());
        let mut conn = pool.acquire().await?;
        let mut tx = conn.begin().await?;
        registry::lock(&mut tx).await?;
        let shadow = registry::rebuild(&mut tx, name)
            .await?
            .filter(|r| r.drift_run == Some(run));
        let keep = match &result {
            Ok((report, _)) => keep_asked.unwrap_or_else(|| report.drifted()),
            Err(_) => false,
        } && shadow.is_some();
        let kept = shadow
            .as_ref()
            .filter(|_| keep)
            .map(|r| r.namespace.clone());
        let error = result.as_ref().err().map(ToString::to_string);
        let finished = runs::finish(
            &mut *tx,
            run,
            match &result {
                Ok((report, tables)) => Ok((report, tables)),
                Err(_) => Err(error.as_deref().unwrap_or_default()),
            },
            kept.as_deref(),
        )
        .await?;
        if !keep {
            if let Some(shadow) = &shadow {
                drop_rebuild(&mut tx, shadow).await?;
                registry::bump(&mut tx, name).await?;
            }
        }
        let done = runs::get(&mut *tx, run).await?;
        if let Some(done) = &done {
            registry::record_action(
                &mut tx,
                &requested_by,
                runs::DRIFT_CHECK,
                Some(name),
                done.outcome.as_str(),
                &json!({
                    "run": run,
                    "compared": done.report.checked,
                    "missing": done.report.missing,
                    "extra": done.report.extra,
                    "different": done.report.different,
                    "shadow": kept,
                    "error": done.error,
                }),
            )
            .await?;
        }
        tx.commit().await?;
        if let Some(done) = done.filter(|_| finished) {
            metrics::counter!(
                RECOVERY_RUNS_TOTAL,
                "kind" => runs::DRIFT_CHECK,
                "outcome" => done.outcome.as_str()
            )
            .increment(1);
            match done.outcome {
                runs::RunOutcome::Drift => tracing::error!(
                    projection = name,
                    run,
                    missing = done.report.missing,
                    extra = done.report.extra,
                    different = done.report.different,
                    shadow = ?kept,
                    "the projection's tables differ from a replay of the log"
                ),
                runs::RunOutcome::Failed => {
                    tracing::warn!(projection = name, run, error = ?done.error, "drift check failed")
                }
                _ => tracing::info!(
                    projection = name,
                    run,
                    compared = done.report.checked,
                    "the projection's tables match a replay of the log"
                ),
            }
        }
        self.reconcile_one(name).await?;
        Ok(())
    }

    /// Repairs a whole projection (see the module docs).
    pub async fn repair_projection(
        &self,
        name: &str,
        actor: &str,
    ) -> Result<ProjectionRepair, OperationError> {
        let mut conn = self.pool().acquire().await?;
        let mut tx = conn.begin().await?;
        registry::lock(&mut tx).await?;
        let current = live_deployment(&mut tx, name).await?;
        let shadow = registry::rebuild(&mut tx, name).await?;
        let usable = shadow.filter(|r| {
            r.is_drift()
                && r.status == "held"
                && r.sha256 == current.sha256
                && r.drift_run.is_some()
        });
        let Some(shadow) = usable else {
            drop(tx);
            self.rebuild(name, actor).await?;
            return Ok(ProjectionRepair::Rebuild);
        };
        let run = shadow.drift_run.unwrap_or_default();
        checkpoint::rename(
            &mut tx,
            &checkpoint::shadow_key(name),
            &checkpoint::rebuild_key(name),
        )
        .await?;
        registry::promote_shadow(&mut tx, name, actor).await?;
        runs::shadow_gone(&mut *tx, run, "the shadow was taken up by a repair").await?;
        registry::notify(&mut tx, name).await?;
        registry::record_action(
            &mut tx,
            actor,
            "repair",
            Some(name),
            "ok",
            &json!({ "run": run, "namespace": shadow.namespace }),
        )
        .await?;
        tx.commit().await?;
        self.reconcile_one(name).await?;
        Ok(ProjectionRepair::Shadow { run })
    }
}

/// A read-only repeatable-read transaction on a connection of its own (closed when dropped, never
/// back in the pool mid-transaction), its statements bounded by [`COMPARE_TIMEOUT`]. Its
/// snapshot is taken by its first query.
pub(crate) async fn open_snapshot(pool: &sqlx::PgPool) -> Result<PgConnection, sqlx::Error> {
    let mut snapshot = pool.acquire().await?.detach();
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut snapshot)
        .await?;
    sqlx::query(&format!(
        "SET LOCAL statement_timeout = {}",
        COMPARE_TIMEOUT.as_millis()
    ))
    .execute(&mut snapshot)
    .await?;
    Ok(snapshot)
}

/// Compares every declared table of `live` with its copy in `shadow`, in the caller's snapshot.
pub async fn compare(
    conn: &mut PgConnection,
    live: &ProjectionSchema,
    shadow: &ProjectionSchema,
) -> Result<(ReadModelReport, Vec<TableDrift>), sqlx::Error> {
    let mut report = ReadModelReport::default();
    let mut tables = Vec::new();
    for table in &live.tables {
        let columns: Vec<String> = table.columns.iter().map(|c| c.name.clone()).collect();
        let keys: Vec<String> = table
            .primary_key
            .iter()
            .map(|&i| table.columns[i].name.clone())
            .collect();
        let diff = TableDiff::new(
            live.qualified(table),
            shadow.qualified(table),
            &keys,
            &columns,
        );
        let room = REPORT_SAMPLE.saturating_sub(report.sample.len());
        let (counts, sample) = diff.run(conn, &table.name, room).await?;
        let drift = TableDrift {
            table: table.name.clone(),
            compared: counts.compared,
            missing: counts.missing,
            extra: counts.extra,
            different: counts.different,
        };
        report.checked += drift.compared;
        report.missing += drift.missing;
        report.extra += drift.extra;
        report.different += drift.different;
        report.sample.extend(sample);
        tables.push(drift);
    }
    Ok((report, tables))
}

/// What the comparison of one table with its other copy counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DiffCounts {
    /// Rows on either side.
    pub compared: i64,
    /// Rows only the shadow (the replay) has.
    pub missing: i64,
    /// Rows only the live table has.
    pub extra: i64,
    /// Rows on both sides whose compared columns differ.
    pub different: i64,
}

/// The SQL comparing one table with another copy of it (`l`: live, `s`: shadow) on its primary
/// key, over the columns both have.
pub(crate) struct TableDiff {
    from: String,
    first_key: String,
    /// Both sides' compared columns differ.
    distinct: String,
    differs: String,
    order: String,
    /// The compared columns, as declared (unquoted), in order.
    columns: Vec<String>,
    /// Which of `columns` form the key, in key order.
    key_positions: Vec<usize>,
}

impl TableDiff {
    /// Compares `live` with `shadow` (qualified table names) joined on `keys`, over `columns`
    /// (which include the keys).
    pub(crate) fn new(live: String, shadow: String, keys: &[String], columns: &[String]) -> Self {
        let quoted: Vec<String> = keys.iter().map(|k| quote(k)).collect();
        let on = quoted
            .iter()
            .map(|k| format!("l.{k} = s.{k}"))
            .collect::<Vec<_>>()
            .join(" AND ");
        let first_key = quoted.first().cloned().unwrap_or_default();
        let row = |side: &str| {
            columns
                .iter()
                .map(|c| format!("{side}.{}", quote(c)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let distinct = format!("ROW({}) IS DISTINCT FROM ROW({})", row("l"), row("s"));
        Self {
            from: format!("{live} l FULL OUTER JOIN {shadow} s ON {on}"),
            // Primary-key columns are NOT NULL: a NULL key means the row is absent on that side.
            differs: format!("l.{first_key} IS NULL OR s.{first_key} IS NULL OR {distinct}"),
            distinct,
            order: quoted
                .iter()
                .map(|k| format!("COALESCE(s.{k}, l.{k})"))
                .collect::<Vec<_>>()
                .join(", "),
            key_positions: keys
                .iter()
                .filter_map(|k| columns.iter().position(|c| c == k))
                .collect(),
            columns: columns.to_vec(),
            first_key,
        }
    }

    /// Counts, then samples at most `room` differing rows of table `table` (as reported).
    pub(crate) async fn run(
        &self,
        conn: &mut PgConnection,
        table: &str,
        room: usize,
    ) -> Result<(DiffCounts, Vec<DriftedRow>), sqlx::Error> {
        let (compared, missing, extra, different): (i64, i64, i64, i64) =
            sqlx::query_as(&self.counts_sql())
                .fetch_one(&mut *conn)
                .await?;
        let counts = DiffCounts {
            compared,
            missing,
            extra,
            different,
        };
        let mut sample = Vec::new();
        if room > 0 && missing + extra + different > 0 {
            let rows = sqlx::query(&self.sample_sql(room))
                .fetch_all(&mut *conn)
                .await?;
            for row in rows {
                sample.push(self.drifted_row(table, &row)?);
            }
        }
        Ok((counts, sample))
    }

    /// Rows compared, missing, extra, different.
    fn counts_sql(&self) -> String {
        let k = &self.first_key;
        format!(
            "SELECT count(*),
                    count(*) FILTER (WHERE l.{k} IS NULL),
                    count(*) FILTER (WHERE s.{k} IS NULL),
                    count(*) FILTER (WHERE l.{k} IS NOT NULL AND s.{k} IS NOT NULL
                                       AND {})
             FROM {}",
            self.distinct, self.from
        )
    }

    /// The first `limit` differing rows in key order: whether the live side lacks the row,
    /// whether the replay does, then every compared column as PostgreSQL writes it as text,
    /// live side first, then the replayed side.
    fn sample_sql(&self, limit: usize) -> String {
        let k = &self.first_key;
        let text = |side: &str| {
            self.columns
                .iter()
                .map(|c| format!("{side}.{}::text", quote(c)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "SELECT l.{k} IS NULL, s.{k} IS NULL, {}, {}
             FROM {} WHERE {} ORDER BY {} LIMIT {limit}",
            text("l"),
            text("s"),
            self.from,
            self.differs,
            self.order
        )
    }

    /// A sampled row (see [`TableDiff::sample_sql`]) as reported: its key, and the columns that
    /// differ (every column for a missing or extra row) with the replayed and the live value.
    fn drifted_row(&self, table: &str, row: &PgRow) -> Result<DriftedRow, sqlx::Error> {
        let missing: bool = row.try_get(0)?;
        let extra: bool = row.try_get(1)?;
        let width = self.columns.len();
        let mut live = Vec::with_capacity(width);
        let mut replayed = Vec::with_capacity(width);
        for i in 0..width {
            live.push(row.try_get::<Option<String>, _>(2 + i)?);
            replayed.push(row.try_get::<Option<String>, _>(2 + width + i)?);
        }
        let drift = if missing {
            RowDrift::Missing
        } else if extra {
            RowDrift::Extra
        } else {
            RowDrift::Different
        };
        let present = if missing { &replayed } else { &live };
        let id = self
            .key_positions
            .iter()
            .map(|&i| {
                format!(
                    "{}={}",
                    self.columns[i],
                    present[i].as_deref().unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let columns = self
            .columns
            .iter()
            .zip(replayed.into_iter().zip(live))
            .filter(|(_, (expected, actual))| drift != RowDrift::Different || expected != actual)
            .map(|(c, (expected, actual))| (c.clone(), expected, actual))
            .collect();
        Ok(DriftedRow {
            table: Some(table.to_owned()),
            id,
            drift,
            columns,
        })
    }
}

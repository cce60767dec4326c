//! Golden tests of a projection: `wallex projections test`.
//!
//! Why it exists: a team should know what its projection writes before it is live. A case is a
//! data file — *given* events (history), *when* events (what the case is about), *then* the rows
//! of every table (or the error expected at an event) — run through the real sandbox, the real
//! validator and the real mutation planner into a throwaway schema of the local PostgreSQL, with
//! no server. Every case also runs *when* a second time and expects the same rows (a projection
//! must be idempotent under replay), unless it says `"replay": false`.
//!
//! A case file (`tests/NAME.json`; the case is named after the file):
//!
//! ```json
//! {
//!   "description": "a wallet with an opening balance",
//!   "given": [],
//!   "when": [
//!     {"type": "WalletCreated", "data": {"walletId": "w1", "ownerId": "o1",
//!      "initialBalance": "10.50", "currency": "USD", "createdAt": "2026-01-01T00:00:00.000Z"}}
//!   ],
//!   "then": {"wallets": [{"id": "w1", "owner": "o1", "balance": "10.50"}]}
//! }
//! ```
//!
//! Events may be written short: `type` and `data` are required; `stream` (default
//! `wallet-{data.walletId}`, else `stream-1`), `id`, `metadata` and `recordedAt` are filled in
//! deterministically from the event's place in the case (global position 1, 2, … over *given*
//! then *when*; stream versions counted per stream). Every declared table is compared: one the
//! case leaves out must be empty. Expected rows are matched by primary key; a column left out of
//! an expected row is not compared; decimals and timestamps compare by value (`"10.5"` equals
//! `10.50`, any RFC 3339 offset). `"then": {"error": {"position": N,
//! "contains": "text"}}` expects the batch to be refused at event N.
//!
//! Architecture invariant: nothing but the throwaway schema is written, and it is dropped at the
//! end of every case. API boundary: uses the runtime's public sandbox, schema and mutation
//! modules exactly as a worker does (filter by subscription, `handle`, budget, plan, apply), but
//! not the worker, checkpoint or registry.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json};
use sqlx::{Connection, PgConnection};

use wallex_runtime::mutation;
use wallex_runtime::schema::{quote, ColumnType, ProjectionSchema, TableSchema};
use wallex_sandbox::engine::{wit, ComponentError, LoadedComponent, RuntimeLimits};

use super::AuthorError;

/// The folder of a projection project that holds its cases.
pub const CASES_DIR: &str = "tests";
/// Most events one case may hold (given and when together).
pub const MAX_EVENTS_PER_CASE: usize = 10_000;
/// Most rows read back per table.
pub const MAX_ROWS_PER_TABLE: i64 = 100_000;
/// Largest case file read.
pub const MAX_CASE_BYTES: u64 = 16 << 20;
/// The instant of the event at position 0; position N is recorded N seconds later.
const EPOCH: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

/// One case as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// What the case checks, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// History applied first.
    #[serde(default)]
    pub given: Vec<EventSpec>,
    /// The events the case is about.
    #[serde(default)]
    pub when: Vec<EventSpec>,
    /// What must follow: rows per table, or an error.
    pub then: Expected,
    /// Run *when* a second time and expect the same rows (default true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub replay: bool,
}

fn yes() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

/// An event as a case writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EventSpec {
    /// The event type (`WalletCreated`, …).
    #[serde(rename = "type")]
    pub event_type: String,
    /// The event's data.
    pub data: Json,
    /// The stream (default `wallet-{data.walletId}`, else `stream-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The event id (default: a UUID derived from its position).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The metadata (default: correlation and causation ids derived from its position).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Json>,
    /// When it was recorded (default: 2026-01-01T00:00:00Z plus its position in seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_at: Option<String>,
}

/// What a case expects.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Expected {
    /// The batch is refused.
    Error {
        /// Where and why.
        error: ExpectedError,
    },
    /// Rows per table (a declared table left out must have no rows).
    Rows(BTreeMap<String, Vec<Map<String, Json>>>),
}

/// An expected refusal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedError {
    /// The global position (1-based over given then when) the error names, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<i64>,
    /// Text the error message contains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
}

/// A case read from its file.
#[derive(Debug, Clone)]
pub struct Case {
    /// The file's stem.
    pub name: String,
    /// Where it was read from (for `--update`).
    pub path: PathBuf,
    /// What it says.
    pub file: CaseFile,
}

/// One difference between what a case expects and what the projection did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Mismatch {
    /// The table (`None` for an error mismatch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// The row's primary key, `col=value` joined by commas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The column that differs (`None`: the whole row is missing or extra).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// What the case expects (`null`: no such row).
    pub expected: Json,
    /// What the projection wrote (`null`: no such row).
    pub actual: Json,
    /// Which run: `when` (the first run) or `replay` (the second run of *when*).
    pub phase: &'static str,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = match (&self.table, &self.key, &self.column) {
            (Some(t), Some(k), Some(c)) => format!("{t}[{k}].{c}"),
            (Some(t), Some(k), None) => format!("{t}[{k}]"),
            (Some(t), None, _) => t.clone(),
            (None, _, _) => "outcome".to_owned(),
        };
        let shown = |value: &Json| match value {
            Json::Null => "(none)".to_owned(),
            other => other.to_string(),
        };
        let phase = if self.phase == "replay" {
            " after replaying `when`"
        } else {
            ""
        };
        write!(
            f,
            "{place}{phase}: expected {}, actual {}",
            shown(&self.expected),
            shown(&self.actual)
        )
    }
}

/// How one case went.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaseOutcome {
    /// The case's name.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// What differed (empty when it passed).
    pub mismatches: Vec<Mismatch>,
    /// What the projection did, in the case file's `then` form (what `--update` writes).
    pub actual: Json,
    /// Wall time of the case, in milliseconds.
    pub millis: u64,
}

/// Reads the cases of a folder (`*.json`, by name), or only `only` if given.
pub fn read_cases(dir: &Path, only: Option<&str>) -> Result<Vec<Case>, AuthorError> {
    let io = |source| AuthorError::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == "json") {
            paths.push(path);
        }
    }
    paths.sort();
    let mut cases = Vec::new();
    for path in paths {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if only.is_some_and(|only| only != name) {
            continue;
        }
        let io = |source| AuthorError::Io {
            path: path.display().to_string(),
            source,
        };
        let size = std::fs::metadata(&path).map_err(io)?.len();
        if size > MAX_CASE_BYTES {
            return Err(AuthorError::Invalid(format!(
                "{}: {size} bytes, more than {MAX_CASE_BYTES}",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(&path).map_err(io)?;
        let file: CaseFile = serde_json::from_str(&text).map_err(|e| {
            AuthorError::Invalid(format!("{}: not a case file: {e}", path.display()))
        })?;
        if file.given.len() + file.when.len() > MAX_EVENTS_PER_CASE {
            return Err(AuthorError::Invalid(format!(
                "{}: more than {MAX_EVENTS_PER_CASE} events",
                path.display()
            )));
        }
        cases.push(Case { name, path, file });
    }
    if let Some(only) = only {
        if cases.is_empty() {
            return Err(AuthorError::Invalid(format!(
                "no case named {only} in {}",
                dir.display()
            )));
        }
    }
    Ok(cases)
}

/// The events of a case with every field filled in: *given* then *when*, positions from 1.
pub fn events(file: &CaseFile) -> Result<(Vec<wit::Event>, Vec<wit::Event>), AuthorError> {
    let mut versions: HashMap<String, i64> = HashMap::new();
    let mut position = 0_i64;
    let mut fill = |spec: &EventSpec| -> Result<wit::Event, AuthorError> {
        position += 1;
        let stream = spec.stream.clone().unwrap_or_else(|| {
            match spec.data.get("walletId").and_then(Json::as_str) {
                Some(wallet) => format!("wallet-{wallet}"),
                None => "stream-1".to_owned(),
            }
        });
        let version = versions.entry(stream.clone()).or_insert(0);
        *version += 1;
        let recorded_at = match &spec.recorded_at {
            Some(text) => DateTime::parse_from_rfc3339(text)
                .map_err(|e| {
                    AuthorError::Invalid(format!("event {position}: recordedAt {text:?}: {e}"))
                })?
                .with_timezone(&Utc),
            None => Utc
                .timestamp_opt(EPOCH + position, 0)
                .single()
                .unwrap_or_default(),
        };
        let id = spec.id.clone().unwrap_or_else(|| {
            uuid::Uuid::new_v5(
                &uuid::Uuid::NAMESPACE_OID,
                format!("wallex-golden:{position}").as_bytes(),
            )
            .to_string()
        });
        let metadata = spec.metadata.clone().unwrap_or_else(|| {
            json!({"correlationId": format!("golden-{position}"), "causationId": format!("golden-{position}")})
        });
        Ok(wit::Event {
            global_position: position,
            order: wit::LogOrder {
                xact_id: position,
                position,
            },
            event_id: id,
            stream_id: stream,
            stream_version: *version,
            event_type: spec.event_type.clone(),
            data: spec.data.to_string(),
            metadata: metadata.to_string(),
            recorded_at: recorded_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        })
    };
    let given = file.given.iter().map(&mut fill).collect::<Result<_, _>>()?;
    let when = file.when.iter().map(&mut fill).collect::<Result<_, _>>()?;
    Ok((given, when))
}

/// A refused batch: the message and the position it names.
struct Refusal {
    message: String,
    position: Option<i64>,
}

/// Runs one batch as a worker would: subscribed events only, `handle`, budget, plan, apply in
/// one transaction.
async fn apply_batch(
    conn: &mut PgConnection,
    component: &LoadedComponent,
    schema: &ProjectionSchema,
    limits: &RuntimeLimits,
    events: &[wit::Event],
) -> Result<Result<(), Refusal>, AuthorError> {
    let batch: Vec<wit::Event> = events
        .iter()
        .filter(|e| schema.subscriptions.includes(&e.event_type))
        .cloned()
        .collect();
    if batch.is_empty() {
        return Ok(Ok(()));
    }
    let mutations = match component.handle(&batch, limits) {
        Ok(mutations) => mutations,
        Err(ComponentError::Rejected {
            message, position, ..
        }) => return Ok(Err(Refusal { message, position })),
        Err(other) => {
            return Ok(Err(Refusal {
                message: other.to_string(),
                position: None,
            }))
        }
    };
    let planned = mutation::check_budget(&mutations, limits.max_mutations, limits.max_batch_bytes)
        .and_then(|()| mutation::plan(schema, &mutations));
    let plan = match planned {
        Ok(plan) => plan,
        Err(error) => {
            return Ok(Err(Refusal {
                message: error.to_string(),
                position: None,
            }))
        }
    };
    let mut tx = conn.begin().await.map_err(AuthorError::Database)?;
    match mutation::apply(&mut tx, &plan).await {
        Ok(_) => {
            tx.commit().await.map_err(AuthorError::Database)?;
            Ok(Ok(()))
        }
        Err(error) => match mutation::data_rejection(&error) {
            Some(message) => Ok(Err(Refusal {
                message,
                position: None,
            })),
            None => Err(AuthorError::Database(error)),
        },
    }
}

/// Every row of every declared table, normalized (see [`normalize`]), by table, in key order.
async fn read_rows(
    conn: &mut PgConnection,
    schema: &ProjectionSchema,
) -> Result<BTreeMap<String, Vec<Map<String, Json>>>, AuthorError> {
    let mut tables = BTreeMap::new();
    for table in &schema.tables {
        let order: Vec<String> = table
            .primary_key
            .iter()
            .map(|&i| quote(&table.columns[i].name))
            .collect();
        let sql = format!(
            "SELECT to_jsonb(t) FROM {} t ORDER BY {} LIMIT {MAX_ROWS_PER_TABLE}",
            schema.qualified(table),
            order.join(", ")
        );
        let rows: Vec<Json> = sqlx::query_scalar(&sql)
            .fetch_all(&mut *conn)
            .await
            .map_err(AuthorError::Database)?;
        let rows = rows.into_iter().map(|row| normalize(table, row)).collect();
        tables.insert(table.name.clone(), rows);
    }
    Ok(tables)
}

/// A row as PostgreSQL's `to_jsonb` gives it, in the case file's form: decimals as strings (no
/// float rounding), timestamps as RFC 3339 in UTC with milliseconds, columns in declaration
/// order.
fn normalize(table: &TableSchema, row: Json) -> Map<String, Json> {
    let mut object = match row {
        Json::Object(object) => object,
        _ => Map::new(),
    };
    let mut out = Map::new();
    for column in &table.columns {
        let value = object.remove(&column.name).unwrap_or(Json::Null);
        let value = match (column.ty, value) {
            (_, Json::Null) => Json::Null,
            (ColumnType::Decimal, Json::Number(n)) => Json::String(n.to_string()),
            (ColumnType::Timestamp, Json::String(text)) => {
                match DateTime::parse_from_rfc3339(&text) {
                    Ok(at) => Json::String(
                        at.with_timezone(&Utc)
                            .to_rfc3339_opts(SecondsFormat::AutoSi, true),
                    ),
                    Err(_) => Json::String(text),
                }
            }
            (_, value) => value,
        };
        out.insert(column.name.clone(), value);
    }
    out
}

/// Whether an expected value equals an actual one for a column of type `ty`.
fn same(ty: ColumnType, expected: &Json, actual: &Json) -> bool {
    let text = |v: &Json| match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match ty {
        _ if expected.is_null() || actual.is_null() => expected.is_null() && actual.is_null(),
        ColumnType::Decimal => {
            match (
                text(expected).and_then(|t| t.parse::<Decimal>().ok()),
                text(actual).and_then(|t| t.parse::<Decimal>().ok()),
            ) {
                (Some(e), Some(a)) => e == a,
                _ => expected == actual,
            }
        }
        ColumnType::S64 => match (
            text(expected).and_then(|t| t.parse::<i64>().ok()),
            text(actual).and_then(|t| t.parse::<i64>().ok()),
        ) {
            (Some(e), Some(a)) => e == a,
            _ => expected == actual,
        },
        ColumnType::F64 => match (expected.as_f64(), actual.as_f64()) {
            (Some(e), Some(a)) => e == a,
            _ => expected == actual,
        },
        ColumnType::Timestamp => {
            let at = |v: &Json| {
                v.as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc))
            };
            match (at(expected), at(actual)) {
                (Some(e), Some(a)) => e == a,
                _ => expected == actual,
            }
        }
        ColumnType::Uuid => match (expected.as_str(), actual.as_str()) {
            (Some(e), Some(a)) => e.eq_ignore_ascii_case(a),
            _ => expected == actual,
        },
        _ => expected == actual,
    }
}

/// `col=value,…` of a row's primary key (values as the row holds them).
fn key_of(table: &TableSchema, row: &Map<String, Json>) -> Option<String> {
    let mut parts = Vec::new();
    for &i in &table.primary_key {
        let name = &table.columns[i].name;
        let value = row.get(name)?;
        let value = match value {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        };
        parts.push(format!("{name}={value}"));
    }
    Some(parts.join(","))
}

/// Whether the key columns of an expected row equal those of an actual row.
fn same_key(table: &TableSchema, expected: &Map<String, Json>, actual: &Map<String, Json>) -> bool {
    table.primary_key.iter().all(|&i| {
        let column = &table.columns[i];
        match (expected.get(&column.name), actual.get(&column.name)) {
            (Some(e), Some(a)) => same(column.ty, e, a),
            _ => false,
        }
    })
}

/// The differences between expected and actual rows: every declared table is compared, and a
/// table the case leaves out must be empty.
fn compare_rows(
    schema: &ProjectionSchema,
    expected: &BTreeMap<String, Vec<Map<String, Json>>>,
    actual: &BTreeMap<String, Vec<Map<String, Json>>>,
    phase: &'static str,
) -> Vec<Mismatch> {
    let mut mismatches = Vec::new();
    let mut expected = expected.clone();
    for table in &schema.tables {
        expected.entry(table.name.clone()).or_default();
    }
    for (name, expected_rows) in &expected {
        let Some(table) = schema.table(name) else {
            mismatches.push(Mismatch {
                table: Some(name.clone()),
                key: None,
                column: None,
                expected: json!("a declared table"),
                actual: json!(format!(
                    "not declared (tables: {})",
                    schema
                        .tables
                        .iter()
                        .map(|t| t.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                phase,
            });
            continue;
        };
        let actual_rows = actual.get(name).cloned().unwrap_or_default();
        let mut matched = vec![false; actual_rows.len()];
        for expected_row in expected_rows {
            let Some(key) = key_of(table, expected_row) else {
                mismatches.push(Mismatch {
                    table: Some(name.clone()),
                    key: None,
                    column: None,
                    expected: Json::Object(expected_row.clone()),
                    actual: json!("an expected row must give every primary-key column"),
                    phase,
                });
                continue;
            };
            let found = actual_rows
                .iter()
                .enumerate()
                .find(|(i, row)| !matched[*i] && same_key(table, expected_row, row));
            let Some((index, actual_row)) = found else {
                mismatches.push(Mismatch {
                    table: Some(name.clone()),
                    key: Some(key),
                    column: None,
                    expected: Json::Object(expected_row.clone()),
                    actual: Json::Null,
                    phase,
                });
                continue;
            };
            matched[index] = true;
            for (column_name, expected_value) in expected_row {
                let Some(column) = table.column(column_name).map(|i| &table.columns[i]) else {
                    mismatches.push(Mismatch {
                        table: Some(name.clone()),
                        key: Some(key.clone()),
                        column: Some(column_name.clone()),
                        expected: expected_value.clone(),
                        actual: json!("no such column"),
                        phase,
                    });
                    continue;
                };
                let actual_value = actual_row.get(column_name).unwrap_or(&Json::Null);
                if !same(column.ty, expected_value, actual_value) {
                    mismatches.push(Mismatch {
                        table: Some(name.clone()),
                        key: Some(key.clone()),
                        column: Some(column_name.clone()),
                        expected: expected_value.clone(),
                        actual: actual_value.clone(),
                        phase,
                    });
                }
            }
        }
        for (row, _) in actual_rows.iter().zip(&matched).filter(|(_, m)| !**m) {
            mismatches.push(Mismatch {
                table: Some(name.clone()),
                key: key_of(table, row),
                column: None,
                expected: Json::Null,
                actual: Json::Object(row.clone()),
                phase,
            });
        }
    }
    mismatches
}

/// Runs one case in its own throwaway schema (dropped afterwards, pass or fail).
pub async fn run_case(
    conn: &mut PgConnection,
    component: &LoadedComponent,
    schema: &ProjectionSchema,
    limits: &RuntimeLimits,
    case: &Case,
) -> Result<CaseOutcome, AuthorError> {
    let started = Instant::now();
    let namespace = format!(
        "wallex_test_{}",
        uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .get(..16)
            .unwrap_or("0")
    );
    let schema = schema.clone().with_namespace(namespace.clone());
    schema.create(conn).await.map_err(AuthorError::Database)?;
    let result = run_in(conn, component, &schema, limits, case).await;
    let dropped = sqlx::raw_sql(&format!(
        "DROP SCHEMA IF EXISTS {} CASCADE",
        quote(&namespace)
    ))
    .execute(&mut *conn)
    .await;
    let (mismatches, actual) = result?;
    dropped.map_err(AuthorError::Database)?;
    Ok(CaseOutcome {
        name: case.name.clone(),
        passed: mismatches.is_empty(),
        mismatches,
        actual,
        millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

async fn run_in(
    conn: &mut PgConnection,
    component: &LoadedComponent,
    schema: &ProjectionSchema,
    limits: &RuntimeLimits,
    case: &Case,
) -> Result<(Vec<Mismatch>, Json), AuthorError> {
    let (given, when) = events(&case.file)?;
    let mut refusal = apply_batch(conn, component, schema, limits, &given)
        .await?
        .err();
    if refusal.is_none() {
        refusal = apply_batch(conn, component, schema, limits, &when)
            .await?
            .err();
    }
    if let Some(refusal) = refusal {
        let actual = json!({"error": {"position": refusal.position, "contains": refusal.message}});
        let mismatches = match &case.file.then {
            Expected::Error { error } => {
                let position_ok = error.position.is_none() || error.position == refusal.position;
                let text_ok = error
                    .contains
                    .as_ref()
                    .is_none_or(|text| refusal.message.contains(text.as_str()));
                if position_ok && text_ok {
                    Vec::new()
                } else {
                    vec![Mismatch {
                        table: None,
                        key: None,
                        column: None,
                        expected: json!({"position": error.position, "contains": error.contains}),
                        actual: json!({"position": refusal.position, "message": refusal.message}),
                        phase: "when",
                    }]
                }
            }
            Expected::Rows(_) => vec![Mismatch {
                table: None,
                key: None,
                column: None,
                expected: json!("rows"),
                actual: json!({"error": refusal.message, "position": refusal.position}),
                phase: "when",
            }],
        };
        return Ok((mismatches, actual));
    }
    let rows = read_rows(conn, schema).await?;
    let actual = json!(rows);
    let mut mismatches = match &case.file.then {
        Expected::Rows(expected) => compare_rows(schema, expected, &rows, "when"),
        Expected::Error { error } => vec![Mismatch {
            table: None,
            key: None,
            column: None,
            expected: json!({"error": {"position": error.position, "contains": error.contains}}),
            actual: json!("the batch was applied"),
            phase: "when",
        }],
    };
    if case.file.replay && mismatches.is_empty() {
        if let Some(refusal) = apply_batch(conn, component, schema, limits, &when)
            .await?
            .err()
        {
            mismatches.push(Mismatch {
                table: None,
                key: None,
                column: None,
                expected: json!("replaying `when` is accepted"),
                actual: json!({"error": refusal.message, "position": refusal.position}),
                phase: "replay",
            });
        } else {
            let replayed = read_rows(conn, schema).await?;
            let all_tables: BTreeMap<String, Vec<Map<String, Json>>> = rows.clone();
            mismatches.extend(compare_rows(schema, &all_tables, &replayed, "replay"));
        }
    }
    Ok((mismatches, actual))
}

/// Writes the outcome as the case's expectation (`--update`), keeping everything else.
pub fn update(case: &Case, outcome: &CaseOutcome) -> Result<(), AuthorError> {
    let mut file = case.file.clone();
    file.then = serde_json::from_value(outcome.actual.clone())
        .map_err(|e| AuthorError::Invalid(format!("cannot write {}: {e}", case.path.display())))?;
    let text = serde_json::to_string_pretty(&file)
        .map_err(|e| AuthorError::Invalid(format!("cannot write {}: {e}", case.path.display())))?;
    std::fs::write(&case.path, format!("{text}\n")).map_err(|source| AuthorError::Io {
        path: case.path.display().to_string(),
        source,
    })
}

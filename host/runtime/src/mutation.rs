//! Mutations returned by a component: validated against its declaration, then turned into
//! parameterised SQL by the host.
//!
//! Why it exists: the host never executes SQL text written by a component. A mutation names a
//! declared table and declared columns and carries typed values; anything else (unknown table or
//! column, a value of the wrong type, a missing key or NOT NULL column, `add` on a non-numeric
//! column) fails the whole batch with a precise error. Consecutive mutations of the same shape are
//! applied as one `UNNEST` statement, so a batch costs a few round trips, not one per row.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::engine::wit;
use super::schema::{quote, ColumnType, ProjectionSchema, TableSchema};
use super::text::quoted;

/// Most mutations one `handle` call may return.
pub const MAX_MUTATIONS_PER_BATCH: usize = 100_000;
/// Most rows applied by one statement.
pub const MAX_ROWS_PER_STATEMENT: usize = 5_000;
/// Longest accepted decimal text.
pub const MAX_DECIMAL_LEN: usize = 200;

/// Why a batch's mutations were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MutationError {
    #[error("the batch returned {0} mutations, more than {MAX_MUTATIONS_PER_BATCH}")]
    TooMany(usize),
    #[error("the call returned {count} mutations, more than the limit of {limit}")]
    OverCount { count: usize, limit: usize },
    #[error("the call returned more than {limit} bytes of mutations")]
    OverBytes { limit: usize },
    #[error("mutation #{index} ({op} on table {table}): {problem}")]
    Invalid {
        index: usize,
        op: &'static str,
        table: String,
        problem: String,
    },
}

/// A batch's mutations as statements ready to run, in order.
#[derive(Debug, Default)]
pub struct Plan {
    pub statements: Vec<Statement>,
}

/// One parameterised statement: `sql` uses `$1..$n`, one array per parameter, all of equal length.
#[derive(Debug)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<ColumnArray>,
    pub rows: usize,
}

/// A parameter: one typed array of column values.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnArray {
    Bool(Vec<Option<bool>>),
    I64(Vec<Option<i64>>),
    F64(Vec<Option<f64>>),
    /// text, decimal (cast to numeric) and json (cast to jsonb).
    Text(Vec<Option<String>>),
    Timestamp(Vec<Option<DateTime<Utc>>>),
    Uuid(Vec<Option<Uuid>>),
    Bytes(Vec<Option<Vec<u8>>>),
}

impl ColumnArray {
    fn new(ty: ColumnType) -> Self {
        match ty {
            ColumnType::Bool => Self::Bool(Vec::new()),
            ColumnType::S64 => Self::I64(Vec::new()),
            ColumnType::F64 => Self::F64(Vec::new()),
            ColumnType::Text | ColumnType::Decimal | ColumnType::Json => Self::Text(Vec::new()),
            ColumnType::Timestamp => Self::Timestamp(Vec::new()),
            ColumnType::Uuid => Self::Uuid(Vec::new()),
            ColumnType::Bytes => Self::Bytes(Vec::new()),
        }
    }

    fn push(&mut self, value: SqlValue) {
        match (self, value) {
            (Self::Bool(v), SqlValue::Bool(x)) => v.push(x),
            (Self::I64(v), SqlValue::I64(x)) => v.push(x),
            (Self::F64(v), SqlValue::F64(x)) => v.push(x),
            (Self::Text(v), SqlValue::Text(x)) => v.push(x),
            (Self::Timestamp(v), SqlValue::Timestamp(x)) => v.push(x),
            (Self::Uuid(v), SqlValue::Uuid(x)) => v.push(x),
            (Self::Bytes(v), SqlValue::Bytes(x)) => v.push(x),
            // `validate_value` only produces the variant of the column's type.
            (array, value) => unreachable!("{value:?} pushed into {array:?}"),
        }
    }
}

/// A validated value, in the representation it is bound with.
#[derive(Debug, Clone, PartialEq)]
enum SqlValue {
    Bool(Option<bool>),
    I64(Option<i64>),
    F64(Option<f64>),
    Text(Option<String>),
    Timestamp(Option<DateTime<Utc>>),
    Uuid(Option<Uuid>),
    Bytes(Option<Vec<u8>>),
}

/// The array type a parameter of this column type is bound and cast as.
fn param_cast(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Bool => "boolean[]",
        ColumnType::S64 => "bigint[]",
        ColumnType::F64 => "float8[]",
        ColumnType::Text => "text[]",
        ColumnType::Decimal => "text[]::numeric[]",
        ColumnType::Json => "text[]::jsonb[]",
        ColumnType::Timestamp => "timestamptz[]",
        ColumnType::Uuid => "uuid[]",
        ColumnType::Bytes => "bytea[]",
    }
}

/// What makes two mutations share one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    Insert {
        table: usize,
        columns: Vec<usize>,
    },
    Upsert {
        table: usize,
        columns: Vec<usize>,
        accumulate: Vec<usize>,
        guard: Vec<usize>,
    },
    Update {
        table: usize,
        set: Vec<usize>,
        add: Vec<usize>,
    },
    Delete {
        table: usize,
    },
}

impl Shape {
    fn table(&self) -> usize {
        match self {
            Self::Insert { table, .. }
            | Self::Upsert { table, .. }
            | Self::Update { table, .. }
            | Self::Delete { table } => *table,
        }
    }

    /// The declared columns bound as parameters, in order.
    fn params(&self, schema: &TableSchema) -> Vec<usize> {
        match self {
            Self::Insert { columns, .. } | Self::Upsert { columns, .. } => columns.clone(),
            Self::Update { set, add, .. } => {
                let mut params = schema.primary_key.clone();
                params.extend(set);
                params.extend(add);
                params
            }
            Self::Delete { .. } => schema.primary_key.clone(),
        }
    }

    /// Whether a repeated key must start a new statement (one statement cannot touch a row twice).
    fn splits_on_repeated_key(&self) -> bool {
        !matches!(self, Self::Insert { .. })
    }

    fn sql(&self, projection: &ProjectionSchema, table: &TableSchema) -> String {
        let target = projection.qualified(table);
        let params = self.params(table);
        let unnest = params
            .iter()
            .enumerate()
            .map(|(n, &c)| format!("${}::{}", n + 1, param_cast(table.columns[c].ty)))
            .collect::<Vec<_>>()
            .join(", ");
        let name = |c: usize| quote(&table.columns[c].name);
        let names = |cs: &[usize]| cs.iter().map(|&c| name(c)).collect::<Vec<_>>().join(", ");
        let key_match = |offset: usize| {
            table
                .primary_key
                .iter()
                .enumerate()
                .map(|(i, &c)| format!("t.{} = v.p{}", name(c), offset + i))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let aliases = (0..params.len())
            .map(|i| format!("p{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        match self {
            Self::Insert { columns, .. } => {
                format!(
                    "INSERT INTO {target} ({}) SELECT * FROM UNNEST({unnest})",
                    names(columns)
                )
            }
            Self::Upsert {
                columns,
                accumulate,
                guard,
                ..
            } => {
                let updates: Vec<String> = columns
                    .iter()
                    .filter(|&&c| !table.is_key(c))
                    .map(|&c| {
                        if accumulate.contains(&c) {
                            format!("{0} = t.{0} + EXCLUDED.{0}", name(c))
                        } else {
                            format!("{0} = EXCLUDED.{0}", name(c))
                        }
                    })
                    .collect();
                let conflict = if updates.is_empty() {
                    "DO NOTHING".to_owned()
                } else {
                    let mut clause = format!("DO UPDATE SET {}", updates.join(", "));
                    if !guard.is_empty() {
                        let existing = guard
                            .iter()
                            .map(|&c| format!("t.{}", name(c)))
                            .collect::<Vec<_>>()
                            .join(", ");
                        let new = guard
                            .iter()
                            .map(|&c| format!("EXCLUDED.{}", name(c)))
                            .collect::<Vec<_>>()
                            .join(", ");
                        clause.push_str(&format!(" WHERE ({existing}) < ({new})"));
                    }
                    clause
                };
                format!(
                    "INSERT INTO {target} AS t ({}) SELECT * FROM UNNEST({unnest}) ON CONFLICT ({}) {conflict}",
                    names(columns),
                    names(&table.primary_key)
                )
            }
            Self::Update { set, add, .. } => {
                let keys = table.primary_key.len();
                let mut assignments = Vec::new();
                for (i, &c) in set.iter().enumerate() {
                    assignments.push(format!("{} = v.p{}", name(c), keys + i));
                }
                for (i, &c) in add.iter().enumerate() {
                    assignments.push(format!(
                        "{0} = t.{0} + v.p{1}",
                        name(c),
                        keys + set.len() + i
                    ));
                }
                format!(
                    "UPDATE {target} AS t SET {} FROM UNNEST({unnest}) AS v({aliases}) WHERE {}",
                    assignments.join(", "),
                    key_match(0)
                )
            }
            Self::Delete { .. } => format!(
                "DELETE FROM {target} AS t USING UNNEST({unnest}) AS v({aliases}) WHERE {}",
                key_match(0)
            ),
        }
    }
}

/// One validated mutation: its shape and its parameter values (in `Shape::params` order).
struct Row {
    shape: Shape,
    values: Vec<SqlValue>,
    key: String,
    /// The guard's values when it is made of `s64` columns only (rows may then combine).
    guard: Option<Vec<i64>>,
}

/// Checks a call's output against its budget before anything else looks at it.
pub fn check_budget(
    mutations: &[wit::Mutation],
    max_mutations: usize,
    max_bytes: usize,
) -> Result<(), MutationError> {
    if mutations.len() > max_mutations {
        return Err(MutationError::OverCount {
            count: mutations.len(),
            limit: max_mutations,
        });
    }
    let mut bytes = 0_usize;
    for mutation in mutations {
        bytes = bytes.saturating_add(mutation_bytes(mutation));
        if bytes > max_bytes {
            return Err(MutationError::OverBytes { limit: max_bytes });
        }
    }
    Ok(())
}

/// Approximate size of a call's output: names and values of all its mutations.
pub fn output_bytes(mutations: &[wit::Mutation]) -> usize {
    mutations
        .iter()
        .fold(0_usize, |sum, m| sum.saturating_add(mutation_bytes(m)))
}

/// Approximate size of a mutation: its names and values.
fn mutation_bytes(mutation: &wit::Mutation) -> usize {
    fn value(v: &wit::Value) -> usize {
        match v {
            wit::Value::Null | wit::Value::Bool(_) => 1,
            wit::Value::S64(_) | wit::Value::F64(_) => 8,
            wit::Value::Text(t)
            | wit::Value::Decimal(t)
            | wit::Value::Json(t)
            | wit::Value::Timestamp(t)
            | wit::Value::Uuid(t) => t.len(),
            wit::Value::Bytes(b) => b.len(),
        }
    }
    fn cells(values: &[wit::ColumnValue]) -> usize {
        values
            .iter()
            .map(|c| c.column.len() + value(&c.value))
            .sum()
    }
    match mutation {
        wit::Mutation::Insert(op) => op.table.len() + cells(&op.values),
        wit::Mutation::Upsert(op) => {
            op.table.len()
                + cells(&op.values)
                + op.accumulate
                    .iter()
                    .chain(&op.guard)
                    .map(String::len)
                    .sum::<usize>()
        }
        wit::Mutation::Update(op) => {
            op.table.len()
                + cells(&op.key)
                + op.changes
                    .iter()
                    .map(|c| match c {
                        wit::Change::Set(c) | wit::Change::Add(c) => {
                            c.column.len() + value(&c.value)
                        }
                    })
                    .sum::<usize>()
        }
        wit::Mutation::Delete(op) => op.table.len() + cells(&op.key),
    }
}

/// Validates a batch's mutations and groups them into statements.
///
/// A statement never touches a row twice, with one exception that keeps accumulating projections
/// (ledger balances) fast: guarded accumulating upserts whose guard columns are all `s64` may
/// repeat a key within one statement as long as each repetition's guard is higher than the
/// previous one. Applying them one by one would add every increment above the stored guard and
/// set the other columns from the last of them; the combined statement does exactly that (see
/// [`combined_upsert_sql`]).
pub fn plan(
    projection: &ProjectionSchema,
    mutations: &[wit::Mutation],
) -> Result<Plan, MutationError> {
    if mutations.len() > MAX_MUTATIONS_PER_BATCH {
        return Err(MutationError::TooMany(mutations.len()));
    }
    let mut plan = Plan::default();
    let mut current: Option<Group> = None;
    for (index, mutation) in mutations.iter().enumerate() {
        let row = validate(projection, index, mutation)?;
        let fits = current.as_ref().is_some_and(|group| group.accepts(&row));
        if !fits {
            if let Some(group) = current.take() {
                plan.statements.push(group.into_statement(projection));
            }
            current = Some(Group {
                shape: row.shape.clone(),
                rows: Vec::new(),
                last_guard: HashMap::new(),
                combined: false,
            });
        }
        if let Some(group) = current.as_mut() {
            group.push(row);
        }
    }
    if let Some(group) = current {
        plan.statements.push(group.into_statement(projection));
    }
    Ok(plan)
}

/// Consecutive rows of one shape on their way to becoming one statement.
struct Group {
    shape: Shape,
    rows: Vec<Row>,
    /// Per key: the guard of its last row (empty when the shape cannot combine).
    last_guard: HashMap<String, Option<Vec<i64>>>,
    /// Whether a key repeats (needs the combining SQL).
    combined: bool,
}

impl Group {
    fn accepts(&self, row: &Row) -> bool {
        if self.shape != row.shape || self.rows.len() >= MAX_ROWS_PER_STATEMENT {
            return false;
        }
        if !self.shape.splits_on_repeated_key() {
            return true;
        }
        match (self.last_guard.get(&row.key), &row.guard) {
            (None, _) => true,
            (Some(Some(previous)), Some(guard)) => guard > previous,
            _ => false,
        }
    }

    fn push(&mut self, row: Row) {
        if self
            .last_guard
            .insert(row.key.clone(), row.guard.clone())
            .is_some()
        {
            self.combined = true;
        }
        self.rows.push(row);
    }

    fn into_statement(self, projection: &ProjectionSchema) -> Statement {
        let mut planned = statement(projection, &self.shape, self.rows);
        if self.combined {
            let table = &projection.tables[self.shape.table()];
            planned.sql = combined_upsert_sql(projection, table, &self.shape);
        }
        planned
    }
}

/// SQL of a guarded accumulating upsert whose rows may repeat a key with increasing guards: per
/// key, the rows above the stored guard (a suffix, since guards increase) are folded — increments
/// summed, other columns and the guard from the last — and then upserted as usual.
fn combined_upsert_sql(
    projection: &ProjectionSchema,
    table: &TableSchema,
    shape: &Shape,
) -> String {
    let Shape::Upsert {
        columns,
        accumulate,
        guard,
        ..
    } = shape
    else {
        return shape.sql(projection, table);
    };
    let target = projection.qualified(table);
    let name = |c: usize| quote(&table.columns[c].name);
    let param = |c: usize| {
        columns
            .iter()
            .position(|&x| x == c)
            .map(|i| format!("v.p{i}"))
            .unwrap_or_default()
    };
    let unnest = columns
        .iter()
        .enumerate()
        .map(|(n, &c)| format!("${}::{}", n + 1, param_cast(table.columns[c].ty)))
        .collect::<Vec<_>>()
        .join(", ");
    let aliases = (0..columns.len())
        .map(|i| format!("p{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let keys: Vec<String> = table.primary_key.iter().map(|&c| param(c)).collect();
    let folded = columns
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            if table.is_key(c) {
                format!("v.p{i} AS p{i}")
            } else if accumulate.contains(&c) {
                format!("sum(v.p{i}) AS p{i}")
            } else {
                format!("(array_agg(v.p{i} ORDER BY v.ord DESC))[1] AS p{i}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let join = table
        .primary_key
        .iter()
        .map(|&c| format!("t.{} = {}", name(c), param(c)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let stored_guard = guard
        .iter()
        .map(|&c| format!("t.{}", name(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let new_guard = guard
        .iter()
        .map(|&c| param(c))
        .collect::<Vec<_>>()
        .join(", ");
    let first_key = table
        .primary_key
        .first()
        .map(|&c| format!("t.{}", name(c)))
        .unwrap_or_default();
    let upsert = shape.sql(projection, table);
    let conflict = upsert
        .split_once(" ON CONFLICT ")
        .map(|(_, conflict)| conflict)
        .unwrap_or_default();
    format!(
        "WITH v AS (SELECT * FROM UNNEST({unnest}) WITH ORDINALITY AS v({aliases}, ord)), \
         f AS (SELECT {folded} FROM v LEFT JOIN {target} AS t ON {join} \
               WHERE {first_key} IS NULL OR ({stored_guard}) < ({new_guard}) \
               GROUP BY {}) \
         INSERT INTO {target} AS t ({}) SELECT {aliases} FROM f ON CONFLICT {conflict}",
        keys.join(", "),
        columns
            .iter()
            .map(|&c| name(c))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

fn statement(projection: &ProjectionSchema, shape: &Shape, rows: Vec<Row>) -> Statement {
    let table = &projection.tables[shape.table()];
    let params = shape.params(table);
    let mut arrays: Vec<ColumnArray> = params
        .iter()
        .map(|&c| ColumnArray::new(table.columns[c].ty))
        .collect();
    let count = rows.len();
    for row in rows {
        for (array, value) in arrays.iter_mut().zip(row.values) {
            array.push(value);
        }
    }
    Statement {
        sql: shape.sql(projection, table),
        params: arrays,
        rows: count,
    }
}

/// Runs a plan on `conn` (inside the caller's transaction). Returns the rows affected.
pub async fn apply(conn: &mut PgConnection, plan: &Plan) -> Result<u64, sqlx::Error> {
    let mut affected = 0;
    for statement in &plan.statements {
        let mut query = sqlx::query(&statement.sql);
        for param in &statement.params {
            query = match param {
                ColumnArray::Bool(v) => query.bind(v.as_slice()),
                ColumnArray::I64(v) => query.bind(v.as_slice()),
                ColumnArray::F64(v) => query.bind(v.as_slice()),
                ColumnArray::Text(v) => query.bind(v.as_slice()),
                ColumnArray::Timestamp(v) => query.bind(v.as_slice()),
                ColumnArray::Uuid(v) => query.bind(v.as_slice()),
                ColumnArray::Bytes(v) => query.bind(v.as_slice()),
            };
        }
        affected += query.execute(&mut *conn).await?.rows_affected();
    }
    Ok(affected)
}

/// SQLSTATE classes of errors that validated mutations can still meet in PostgreSQL and that
/// say something about the data, not the database: 21 cardinality violation (a row touched twice
/// by keys PostgreSQL finds equal), 22 data exception (an overflowing `accumulate` or `add`), 23
/// integrity constraint violation (an `insert` of an existing key), 54 program limit exceeded (a
/// key too large for its index). The worker attributes them to the events that caused them.
pub const DATA_ERROR_CLASSES: [&str; 4] = ["21", "22", "23", "54"];
/// Savepoint around a range's statements while the worker attributes a data error.
const RANGE_SAVEPOINT: &str = "wallex_range";

/// PostgreSQL's message if `error` is a data error of a mutation (see [`DATA_ERROR_CLASSES`]),
/// bounded: it can quote values.
pub fn data_rejection(error: &sqlx::Error) -> Option<String> {
    let sqlx::Error::Database(db) = error else {
        return None;
    };
    let code = db.code()?;
    DATA_ERROR_CLASSES
        .iter()
        .any(|class| code.starts_with(class))
        .then(|| {
            format!(
                "PostgreSQL rejected the mutations: {} (SQLSTATE {code})",
                super::text::clip(db.message(), super::text::MAX_MESSAGE_BYTES)
            )
        })
}

/// Runs a plan inside a savepoint of the caller's transaction: `Ok(None)` when applied,
/// `Ok(Some(reason))` when PostgreSQL rejected its data (nothing of it applied, the transaction
/// usable), `Err` for any other database error.
pub async fn apply_or_reject(
    conn: &mut PgConnection,
    plan: &Plan,
) -> Result<Option<String>, sqlx::Error> {
    if plan.statements.is_empty() {
        return Ok(None);
    }
    sqlx::query(&format!("SAVEPOINT {RANGE_SAVEPOINT}"))
        .execute(&mut *conn)
        .await?;
    let applied = apply(conn, plan).await;
    let reason = match applied {
        Ok(_) => None,
        Err(error) => match data_rejection(&error) {
            Some(reason) => Some(reason),
            None => return Err(error),
        },
    };
    if reason.is_some() {
        sqlx::query(&format!("ROLLBACK TO SAVEPOINT {RANGE_SAVEPOINT}"))
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(&format!("RELEASE SAVEPOINT {RANGE_SAVEPOINT}"))
        .execute(&mut *conn)
        .await?;
    Ok(reason)
}

fn op_name(mutation: &wit::Mutation) -> (&'static str, &str) {
    match mutation {
        wit::Mutation::Insert(op) => ("insert", &op.table),
        wit::Mutation::Upsert(op) => ("upsert", &op.table),
        wit::Mutation::Update(op) => ("update", &op.table),
        wit::Mutation::Delete(op) => ("delete", &op.table),
    }
}

fn validate(
    projection: &ProjectionSchema,
    index: usize,
    mutation: &wit::Mutation,
) -> Result<Row, MutationError> {
    let (op, table_name) = op_name(mutation);
    let fail = |problem: String| MutationError::Invalid {
        index,
        op,
        table: quoted(table_name),
        problem,
    };
    let table_index = projection
        .tables
        .iter()
        .position(|t| t.name == table_name)
        .ok_or_else(|| {
            fail(format!(
                "unknown table (declared: {})",
                projection
                    .tables
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    let table = &projection.tables[table_index];
    let check = |values: &[wit::ColumnValue]| -> Result<Vec<(usize, SqlValue)>, MutationError> {
        let mut seen = HashSet::new();
        let mut out: Vec<(usize, SqlValue)> = values
            .iter()
            .map(|cv| {
                let c = table
                    .column(&cv.column)
                    .ok_or_else(|| fail(format!("unknown column {}", quoted(&cv.column))))?;
                if !seen.insert(c) {
                    return Err(fail(format!("column {} given twice", quoted(&cv.column))));
                }
                let column = &table.columns[c];
                let value = validate_value(column.ty, &cv.value).map_err(|problem| {
                    fail(format!(
                        "column {} ({}): {problem}",
                        quoted(&column.name),
                        column.ty.name()
                    ))
                })?;
                if is_null(&value) && (!column.nullable || table.is_key(c)) {
                    return Err(fail(format!(
                        "column {} is NOT NULL but got null",
                        quoted(&column.name)
                    )));
                }
                Ok((c, value))
            })
            .collect::<Result<_, _>>()?;
        out.sort_by_key(|(c, _)| *c);
        Ok(out)
    };
    let key_of = |values: &[(usize, SqlValue)]| -> Result<String, MutationError> {
        let mut key = String::new();
        for &k in &table.primary_key {
            let (_, value) = values.iter().find(|(c, _)| *c == k).ok_or_else(|| {
                fail(format!(
                    "missing primary key column {}",
                    quoted(&table.columns[k].name)
                ))
            })?;
            key.push_str(&key_part(table.columns[k].ty, value));
            key.push('\u{1f}');
        }
        Ok(key)
    };
    let require_complete_row = |values: &[(usize, SqlValue)]| -> Result<(), MutationError> {
        for (c, column) in table.columns.iter().enumerate() {
            if !column.nullable && !values.iter().any(|(given, _)| *given == c) {
                return Err(fail(format!(
                    "missing value for NOT NULL column {}",
                    quoted(&column.name)
                )));
            }
        }
        Ok(())
    };
    let resolve_names = |names: &[String], what: &str| -> Result<Vec<usize>, MutationError> {
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let c = table
                .column(name)
                .ok_or_else(|| fail(format!("{what} names unknown column {}", quoted(name))))?;
            if table.is_key(c) {
                return Err(fail(format!(
                    "{what} names primary key column {}",
                    quoted(name)
                )));
            }
            if out.contains(&c) {
                return Err(fail(format!("{what} names column {} twice", quoted(name))));
            }
            out.push(c);
        }
        Ok(out)
    };
    // The statements bind key values in the primary key's declared order, which need not be
    // the columns' order (a key declared as (b, a)). `key_of` has checked they are all there.
    let in_key_order = |values: Vec<(usize, SqlValue)>| -> Vec<SqlValue> {
        table
            .primary_key
            .iter()
            .filter_map(|k| values.iter().find(|(c, _)| c == k).map(|(_, v)| v.clone()))
            .collect()
    };
    match mutation {
        wit::Mutation::Insert(op) => {
            let values = check(&op.values)?;
            let key = key_of(&values)?;
            require_complete_row(&values)?;
            let (columns, values) = values.into_iter().unzip();
            Ok(Row {
                shape: Shape::Insert {
                    table: table_index,
                    columns,
                },
                values,
                key,
                guard: None,
            })
        }
        wit::Mutation::Upsert(op) => {
            let values = check(&op.values)?;
            let key = key_of(&values)?;
            require_complete_row(&values)?;
            let mut accumulate = resolve_names(&op.accumulate, "accumulate")?;
            let mut guard = resolve_names(&op.guard, "guard")?;
            for &c in &accumulate {
                let column = &table.columns[c];
                if !column.ty.is_numeric() {
                    return Err(fail(format!(
                        "accumulate on non-numeric column {} ({})",
                        quoted(&column.name),
                        column.ty.name()
                    )));
                }
                if !values.iter().any(|(given, v)| *given == c && !is_null(v)) {
                    return Err(fail(format!(
                        "accumulate column {} has no value",
                        quoted(&column.name)
                    )));
                }
            }
            for &c in &guard {
                let column = &table.columns[c];
                if column.nullable || !values.iter().any(|(given, _)| *given == c) {
                    return Err(fail(format!(
                        "guard column {} must be NOT NULL and given",
                        quoted(&column.name)
                    )));
                }
                if accumulate.contains(&c) {
                    return Err(fail(format!(
                        "guard column {} is also accumulated",
                        quoted(&column.name)
                    )));
                }
            }
            accumulate.sort_unstable();
            // The guard compares as a row: its order matters and is kept.
            guard.shrink_to_fit();
            let guard_values = if guard.is_empty() || accumulate.is_empty() {
                None
            } else {
                guard
                    .iter()
                    .map(|&g| match values.iter().find(|(c, _)| *c == g) {
                        Some((_, SqlValue::I64(Some(n)))) => Some(*n),
                        _ => None,
                    })
                    .collect::<Option<Vec<i64>>>()
            };
            let (columns, values) = values.into_iter().unzip();
            Ok(Row {
                shape: Shape::Upsert {
                    table: table_index,
                    columns,
                    accumulate,
                    guard,
                },
                values,
                key,
                guard: guard_values,
            })
        }
        wit::Mutation::Update(op) => {
            let key_values = check(&op.key)?;
            if key_values.len() != table.primary_key.len() {
                return Err(fail(format!(
                    "the key must give exactly the primary key columns ({})",
                    table
                        .primary_key
                        .iter()
                        .map(|&c| table.columns[c].name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            let key = key_of(&key_values)?;
            if op.changes.is_empty() {
                return Err(fail("no changes".to_owned()));
            }
            let mut sets = Vec::new();
            let mut adds = Vec::new();
            let mut seen = HashSet::new();
            for change in &op.changes {
                let (cv, is_add) = match change {
                    wit::Change::Set(cv) => (cv, false),
                    wit::Change::Add(cv) => (cv, true),
                };
                let [(c, value)]: [(usize, SqlValue); 1] = check(std::slice::from_ref(cv))?
                    .try_into()
                    .map_err(|_| fail("internal: one change, one value".to_owned()))?;
                let column = &table.columns[c];
                if table.is_key(c) {
                    return Err(fail(format!(
                        "cannot change primary key column {}",
                        quoted(&column.name)
                    )));
                }
                if !seen.insert(c) {
                    return Err(fail(format!(
                        "column {} changed twice",
                        quoted(&column.name)
                    )));
                }
                if is_add {
                    if !column.ty.is_numeric() {
                        return Err(fail(format!(
                            "add on non-numeric column {} ({})",
                            quoted(&column.name),
                            column.ty.name()
                        )));
                    }
                    if is_null(&value) {
                        return Err(fail(format!(
                            "add of null to column {}",
                            quoted(&column.name)
                        )));
                    }
                    adds.push((c, value));
                } else {
                    sets.push((c, value));
                }
            }
            sets.sort_by_key(|(c, _)| *c);
            adds.sort_by_key(|(c, _)| *c);
            let mut values = in_key_order(key_values);
            let (set, set_values): (Vec<usize>, Vec<SqlValue>) = sets.into_iter().unzip();
            let (add, add_values): (Vec<usize>, Vec<SqlValue>) = adds.into_iter().unzip();
            values.extend(set_values);
            values.extend(add_values);
            Ok(Row {
                shape: Shape::Update {
                    table: table_index,
                    set,
                    add,
                },
                values,
                key,
                guard: None,
            })
        }
        wit::Mutation::Delete(op) => {
            let key_values = check(&op.key)?;
            if key_values.len() != table.primary_key.len() {
                return Err(fail(
                    "the key must give exactly the primary key columns".to_owned(),
                ));
            }
            let key = key_of(&key_values)?;
            Ok(Row {
                shape: Shape::Delete { table: table_index },
                values: in_key_order(key_values),
                key,
                guard: None,
            })
        }
    }
}

/// A key value as PostgreSQL compares it, so that two mutations of one row are recognised
/// (one statement must not touch a row twice): `1.50` and `1.5` are one `numeric`, `-0` and `0`
/// one `float8`.
fn key_part(ty: ColumnType, value: &SqlValue) -> String {
    match (ty, value) {
        (ColumnType::Decimal, SqlValue::Text(Some(text))) => canonical_decimal(text),
        (_, SqlValue::F64(Some(x))) if *x == 0.0 => "F64(0)".to_owned(),
        _ => format!("{value:?}"),
    }
}

/// A validated decimal (`-?digits(.digits)?`) without leading zeros, trailing fraction zeros or
/// the sign of zero.
fn canonical_decimal(text: &str) -> String {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let zero = int == "0" && frac.is_empty();
    let sign = if negative && !zero { "-" } else { "" };
    if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

fn is_null(value: &SqlValue) -> bool {
    match value {
        SqlValue::Bool(v) => v.is_none(),
        SqlValue::I64(v) => v.is_none(),
        SqlValue::F64(v) => v.is_none(),
        SqlValue::Text(v) => v.is_none(),
        SqlValue::Timestamp(v) => v.is_none(),
        SqlValue::Uuid(v) => v.is_none(),
        SqlValue::Bytes(v) => v.is_none(),
    }
}

fn value_kind(value: &wit::Value) -> &'static str {
    match value {
        wit::Value::Null => "null",
        wit::Value::Bool(_) => "bool",
        wit::Value::S64(_) => "s64",
        wit::Value::F64(_) => "f64",
        wit::Value::Text(_) => "text",
        wit::Value::Decimal(_) => "decimal",
        wit::Value::Json(_) => "json",
        wit::Value::Timestamp(_) => "timestamp",
        wit::Value::Uuid(_) => "uuid",
        wit::Value::Bytes(_) => "bytes",
    }
}

/// Checks that `value` fits a column of type `ty` and converts it. Everything PostgreSQL would
/// refuse is refused here, before any SQL runs: NUL in text and in JSON strings (the `\u0000`
/// escape), JSON numbers outside `numeric`'s range, timestamps outside `timestamptz`'s range.
fn validate_value(ty: ColumnType, value: &wit::Value) -> Result<SqlValue, String> {
    use wit::Value as V;
    let no_nul = |text: &str| {
        if text.contains('\0') {
            Err("text contains a NUL character".to_owned())
        } else {
            Ok(())
        }
    };
    Ok(match (ty, value) {
        (ColumnType::Bool, V::Null) => SqlValue::Bool(None),
        (ColumnType::S64, V::Null) => SqlValue::I64(None),
        (ColumnType::F64, V::Null) => SqlValue::F64(None),
        (ColumnType::Text | ColumnType::Decimal | ColumnType::Json, V::Null) => {
            SqlValue::Text(None)
        }
        (ColumnType::Timestamp, V::Null) => SqlValue::Timestamp(None),
        (ColumnType::Uuid, V::Null) => SqlValue::Uuid(None),
        (ColumnType::Bytes, V::Null) => SqlValue::Bytes(None),
        (ColumnType::Bool, V::Bool(b)) => SqlValue::Bool(Some(*b)),
        (ColumnType::S64, V::S64(n)) => SqlValue::I64(Some(*n)),
        (ColumnType::F64, V::F64(x)) => SqlValue::F64(Some(*x)),
        (ColumnType::Text, V::Text(s)) => {
            no_nul(s)?;
            SqlValue::Text(Some(s.clone()))
        }
        (ColumnType::Decimal, V::Decimal(s)) => {
            if !is_decimal(s) {
                return Err(format!(
                    "{} is not a decimal (-?digits[.digits])",
                    quoted(s)
                ));
            }
            SqlValue::Text(Some(s.clone()))
        }
        (ColumnType::Json, V::Json(s)) => {
            no_nul(s)?;
            let document: serde_json::Value =
                serde_json::from_str(s).map_err(|e| format!("invalid JSON: {e}"))?;
            check_jsonb(&document)?;
            SqlValue::Text(Some(s.clone()))
        }
        (ColumnType::Timestamp, V::Timestamp(s)) => {
            let instant = DateTime::parse_from_rfc3339(s)
                .map_err(|e| format!("{} is not an RFC 3339 timestamp: {e}", quoted(s)))?
                .with_timezone(&Utc);
            if !timestamp_in_range(&instant) {
                return Err(format!(
                    "{} is outside PostgreSQL's timestamp range (4714-11-24 BC to 294276-12-31)",
                    quoted(s)
                ));
            }
            SqlValue::Timestamp(Some(instant))
        }
        (ColumnType::Uuid, V::Uuid(s)) => SqlValue::Uuid(Some(
            Uuid::parse_str(s).map_err(|e| format!("{} is not a UUID: {e}", quoted(s)))?,
        )),
        (ColumnType::Bytes, V::Bytes(b)) => SqlValue::Bytes(Some(b.clone())),
        (ty, value) => {
            return Err(format!(
                "wrong type: expected {}, got {}",
                ty.name(),
                value_kind(value)
            ))
        }
    })
}

/// Most digits before the decimal point of a `numeric`.
pub const NUMERIC_MAX_INTEGER_DIGITS: i64 = 131_072;
/// Most digits after the decimal point of a `numeric`.
pub const NUMERIC_MAX_FRACTION_DIGITS: i64 = 16_383;

/// Whether PostgreSQL's `jsonb` stores `document`: no `\u0000` in a string or key, every number
/// within `numeric`'s range.
fn check_jsonb(document: &serde_json::Value) -> Result<(), String> {
    let mut pending = vec![document];
    while let Some(value) = pending.pop() {
        match value {
            serde_json::Value::String(text) if text.contains('\0') => {
                return Err(
                    "JSON string contains \\u0000, which PostgreSQL's jsonb cannot store".into(),
                )
            }
            serde_json::Value::Number(number) if !numeric_fits(&number.to_string()) => {
                return Err(format!(
                    "JSON number {} is outside PostgreSQL's numeric range",
                    super::text::clip(&number.to_string(), super::text::MAX_NAME_BYTES)
                ))
            }
            serde_json::Value::Array(items) => pending.extend(items),
            serde_json::Value::Object(fields) => {
                if fields.keys().any(|key| key.contains('\0')) {
                    return Err(
                        "JSON key contains \\u0000, which PostgreSQL's jsonb cannot store".into(),
                    );
                }
                pending.extend(fields.values());
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether a JSON number's text (`-?int(.frac)?([eE][+-]?exp)?`) fits PostgreSQL's `numeric`.
fn numeric_fits(text: &str) -> bool {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], &unsigned[at + 1..]),
        None => (unsigned, "0"),
    };
    let Ok(exponent) = exponent.parse::<i64>() else {
        // Longer than i64: far outside the range.
        return false;
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let int = int.trim_start_matches('0');
    let int_len = i64::try_from(int.len()).unwrap_or(i64::MAX);
    let frac_len = i64::try_from(frac.len()).unwrap_or(i64::MAX);
    // Zero is zero whatever its exponent; otherwise the digits move by the exponent.
    if int.is_empty() && frac.bytes().all(|b| b == b'0') {
        return frac_len.saturating_sub(exponent).max(0) <= NUMERIC_MAX_FRACTION_DIGITS;
    }
    int_len.saturating_add(exponent) <= NUMERIC_MAX_INTEGER_DIGITS
        && frac_len.saturating_sub(exponent) <= NUMERIC_MAX_FRACTION_DIGITS
}

/// Whether PostgreSQL's `timestamptz` holds `instant`: from 4714-11-24 00:00 UTC BC (Julian day
/// 0, year -4713 in chrono's astronomical numbering) to the end of 294276.
fn timestamp_in_range(instant: &DateTime<Utc>) -> bool {
    use chrono::Datelike;
    let first = chrono::NaiveDate::from_ymd_opt(-4713, 11, 24);
    first.is_some_and(|first| instant.date_naive() >= first) && instant.year() <= 294_276
}

/// `-?digits(.digits)?`, bounded in length.
fn is_decimal(text: &str) -> bool {
    if text.is_empty() || text.len() > MAX_DECIMAL_LEN {
        return false;
    }
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (int, frac) = match unsigned.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (unsigned, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(int) && frac.is_none_or(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> ProjectionSchema {
        let col = |name: &str, type_, nullable| wit::Column {
            name: name.into(),
            type_,
            nullable,
        };
        ProjectionSchema::from_info(&wit::ProjectionInfo {
            name: "p".into(),
            schema_version: 1,
            subscribes_to: vec!["*".into()],
            tables: vec![wit::Table {
                name: "accounts".into(),
                columns: vec![
                    col("id", wit::ColumnType::Text, false),
                    col("balance", wit::ColumnType::Decimal, false),
                    col("version", wit::ColumnType::S64, false),
                    col("note", wit::ColumnType::Text, true),
                    col("opened", wit::ColumnType::Timestamp, true),
                ],
                primary_key: vec!["id".into()],
                indexes: vec![],
            }],
        })
        .unwrap()
    }

    fn cv(column: &str, value: wit::Value) -> wit::ColumnValue {
        wit::ColumnValue {
            column: column.into(),
            value,
        }
    }

    fn upsert(id: &str, balance: &str) -> wit::Mutation {
        wit::Mutation::Upsert(wit::UpsertOp {
            table: "accounts".into(),
            values: vec![
                cv("id", wit::Value::Text(id.into())),
                cv("balance", wit::Value::Decimal(balance.into())),
                cv("version", wit::Value::S64(1)),
            ],
            accumulate: vec!["balance".into()],
            guard: vec!["version".into()],
        })
    }

    fn problem(mutation: wit::Mutation) -> String {
        match plan(&schema(), &[mutation]) {
            Err(MutationError::Invalid { problem, .. }) => problem,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn groups_same_shape_and_splits_on_repeated_key() {
        let plan = plan(
            &schema(),
            &[upsert("a", "1"), upsert("b", "2"), upsert("a", "3")],
        )
        .unwrap();
        assert_eq!(plan.statements.len(), 2);
        assert_eq!(plan.statements[0].rows, 2);
        assert_eq!(
            plan.statements[0].sql,
            "INSERT INTO \"proj_p_v1\".\"accounts\" AS t (\"id\", \"balance\", \"version\") SELECT * FROM UNNEST($1::text[], $2::text[]::numeric[], $3::bigint[]) ON CONFLICT (\"id\") DO UPDATE SET \"balance\" = t.\"balance\" + EXCLUDED.\"balance\", \"version\" = EXCLUDED.\"version\" WHERE (t.\"version\") < (EXCLUDED.\"version\")"
        );
        assert_eq!(
            plan.statements[0].params[0],
            ColumnArray::Text(vec![Some("a".into()), Some("b".into())])
        );
    }

    fn upsert_at(id: &str, balance: &str, version: i64) -> wit::Mutation {
        let mut m = upsert(id, balance);
        if let wit::Mutation::Upsert(op) = &mut m {
            op.values[2] = cv("version", wit::Value::S64(version));
        }
        m
    }

    #[test]
    fn guarded_accumulating_upserts_combine_with_increasing_guards() {
        let plan = plan(
            &schema(),
            &[
                upsert_at("a", "1", 1),
                upsert_at("b", "2", 1),
                upsert_at("a", "3", 2),
                upsert_at("a", "4", 2),
            ],
        )
        .unwrap();
        // "a" at version 2 twice cannot combine (the guard does not increase): two statements.
        assert_eq!(plan.statements.len(), 2);
        assert_eq!(plan.statements[0].rows, 3);
        assert_eq!(
            plan.statements[0].sql,
            "WITH v AS (SELECT * FROM UNNEST($1::text[], $2::text[]::numeric[], $3::bigint[]) WITH ORDINALITY AS v(p0, p1, p2, ord)), \
             f AS (SELECT v.p0 AS p0, sum(v.p1) AS p1, (array_agg(v.p2 ORDER BY v.ord DESC))[1] AS p2 FROM v LEFT JOIN \"proj_p_v1\".\"accounts\" AS t ON t.\"id\" = v.p0 \
             WHERE t.\"id\" IS NULL OR (t.\"version\") < (v.p2) \
             GROUP BY v.p0) \
             INSERT INTO \"proj_p_v1\".\"accounts\" AS t (\"id\", \"balance\", \"version\") SELECT p0, p1, p2 FROM f ON CONFLICT (\"id\") DO UPDATE SET \"balance\" = t.\"balance\" + EXCLUDED.\"balance\", \"version\" = EXCLUDED.\"version\" WHERE (t.\"version\") < (EXCLUDED.\"version\")"
        );
        assert_eq!(plan.statements[1].rows, 1);
        assert!(plan.statements[1].sql.starts_with("INSERT INTO"));
    }

    #[test]
    fn update_and_delete_sql() {
        let update = wit::Mutation::Update(wit::UpdateOp {
            table: "accounts".into(),
            key: vec![cv("id", wit::Value::Text("a".into()))],
            changes: vec![
                wit::Change::Add(cv("balance", wit::Value::Decimal("-1.5".into()))),
                wit::Change::Set(cv("note", wit::Value::Null)),
            ],
        });
        let delete = wit::Mutation::Delete(wit::DeleteOp {
            table: "accounts".into(),
            key: vec![cv("id", wit::Value::Text("a".into()))],
        });
        let plan = plan(&schema(), &[update, delete]).unwrap();
        assert_eq!(
            plan.statements[0].sql,
            "UPDATE \"proj_p_v1\".\"accounts\" AS t SET \"note\" = v.p1, \"balance\" = t.\"balance\" + v.p2 FROM UNNEST($1::text[], $2::text[], $3::text[]::numeric[]) AS v(p0, p1, p2) WHERE t.\"id\" = v.p0"
        );
        assert_eq!(
            plan.statements[1].sql,
            "DELETE FROM \"proj_p_v1\".\"accounts\" AS t USING UNNEST($1::text[]) AS v(p0) WHERE t.\"id\" = v.p0"
        );
    }

    #[test]
    fn rejects_unknown_table() {
        let m = wit::Mutation::Delete(wit::DeleteOp {
            table: "other".into(),
            key: vec![cv("id", wit::Value::Text("a".into()))],
        });
        assert_eq!(problem(m), "unknown table (declared: accounts)");
    }

    #[test]
    fn rejects_unknown_column_wrong_type_and_missing_key() {
        let mut m = upsert("a", "1");
        if let wit::Mutation::Upsert(op) = &mut m {
            op.values.push(cv("nope", wit::Value::Null));
        }
        assert_eq!(problem(m), "unknown column \"nope\"");

        let mut m = upsert("a", "1");
        if let wit::Mutation::Upsert(op) = &mut m {
            op.values[2] = cv("version", wit::Value::Text("1".into()));
        }
        assert_eq!(
            problem(m),
            "column \"version\" (s64): wrong type: expected s64, got text"
        );

        let mut m = upsert("a", "1");
        if let wit::Mutation::Upsert(op) = &mut m {
            op.values.remove(0);
        }
        assert_eq!(problem(m), "missing primary key column \"id\"");

        let mut m = upsert("a", "1");
        if let wit::Mutation::Upsert(op) = &mut m {
            op.values.remove(2);
        }
        assert_eq!(problem(m), "missing value for NOT NULL column \"version\"");
    }

    #[test]
    fn rejects_bad_values() {
        assert_eq!(
            problem(upsert("a", "1e5")),
            "column \"balance\" (decimal): \"1e5\" is not a decimal (-?digits[.digits])"
        );
        assert_eq!(
            problem(upsert("a\0", "1")),
            "column \"id\" (text): text contains a NUL character"
        );
        let m = wit::Mutation::Insert(wit::InsertOp {
            table: "accounts".into(),
            values: vec![
                cv("id", wit::Value::Text("a".into())),
                cv("balance", wit::Value::Null),
                cv("version", wit::Value::S64(1)),
            ],
        });
        assert_eq!(problem(m), "column \"balance\" is NOT NULL but got null");
        let m = wit::Mutation::Insert(wit::InsertOp {
            table: "accounts".into(),
            values: vec![
                cv("id", wit::Value::Text("a".into())),
                cv("version", wit::Value::S64(1)),
                cv("opened", wit::Value::Timestamp("yesterday".into())),
            ],
        });
        assert!(problem(m)
            .starts_with("column \"opened\" (timestamp): \"yesterday\" is not an RFC 3339"));
        let m = wit::Mutation::Update(wit::UpdateOp {
            table: "accounts".into(),
            key: vec![cv("id", wit::Value::Text("a".into()))],
            changes: vec![wit::Change::Add(cv("note", wit::Value::Text("x".into())))],
        });
        assert_eq!(problem(m), "add on non-numeric column \"note\" (text)");
    }

    #[test]
    fn values_postgresql_would_refuse_are_refused_here() {
        let json = |text: &str| validate_value(ColumnType::Json, &wit::Value::Json(text.into()));
        assert!(json(r#"{"a":"x\u0000y"}"#).unwrap_err().contains("\\u0000"));
        assert!(json(r#"{"a\u0000":1}"#).unwrap_err().contains("key"));
        // The bounds, as PostgreSQL 15 draws them.
        assert!(json(r#"[1e131072]"#).unwrap_err().contains("numeric range"));
        assert!(json(r#"[1e-16384]"#).is_err());
        assert!(json(r#"[0e-16384]"#).is_err());
        assert!(json(r#"[1e2147483648]"#).is_err());
        assert!(json(r#"[1e99999999999999999999]"#).is_err());
        assert!(json(r#"[1e131071, 9e131071, 1e-16383, 0e-16383, 0e200000, -2.5e-999]"#).is_ok());
        let stamp =
            |text: &str| validate_value(ColumnType::Timestamp, &wit::Value::Timestamp(text.into()));
        // RFC 3339 has years 0000 to 9999 only, all within PostgreSQL's range; the range check
        // guards the conversion all the same.
        assert!(stamp("0000-01-01T00:00:00+23:59").is_ok());
        assert!(stamp("-5000-01-01T00:00:00Z").is_err());
        let at = |y, m, d| {
            chrono::NaiveDate::from_ymd_opt(y, m, d)
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc())
                .expect("date")
        };
        assert!(timestamp_in_range(&at(-4713, 11, 24)));
        assert!(!timestamp_in_range(&at(-4713, 11, 23)));
        assert!(timestamp_in_range(&at(262_142, 12, 31)));
        assert!(validate_value(ColumnType::Text, &wit::Value::Text("a\0b".into())).is_err());
    }

    /// A projection of one table `name` with NOT NULL `columns` and primary key `key`.
    fn one_table(
        name: &str,
        columns: &[(&str, wit::ColumnType)],
        key: &[&str],
    ) -> ProjectionSchema {
        ProjectionSchema::from_info(&wit::ProjectionInfo {
            name: "p".into(),
            schema_version: 1,
            subscribes_to: vec!["*".into()],
            tables: vec![wit::Table {
                name: name.into(),
                columns: columns
                    .iter()
                    .map(|(name, type_)| wit::Column {
                        name: (*name).into(),
                        type_: *type_,
                        nullable: false,
                    })
                    .collect(),
                primary_key: key.iter().map(|k| (*k).to_owned()).collect(),
                indexes: vec![],
            }],
        })
        .unwrap()
    }

    #[test]
    fn key_values_bind_in_the_declared_key_order() {
        // Found by tests/component_output_fuzz.rs: a key declared (n, id) against columns
        // (id, n) bound the values crosswise (a panic, or the wrong row with equal types).
        let s = one_table(
            "t",
            &[
                ("id", wit::ColumnType::Text),
                ("n", wit::ColumnType::S64),
                ("v", wit::ColumnType::Bool),
            ],
            &["n", "id"],
        );
        let key = vec![
            cv("id", wit::Value::Text("a".into())),
            cv("n", wit::Value::S64(7)),
        ];
        let expected_key = [
            ColumnArray::I64(vec![Some(7)]),
            ColumnArray::Text(vec![Some("a".into())]),
        ];
        let delete = plan(
            &s,
            &[wit::Mutation::Delete(wit::DeleteOp {
                table: "t".into(),
                key: key.clone(),
            })],
        )
        .unwrap();
        assert_eq!(delete.statements[0].params, expected_key);
        let update = plan(
            &s,
            &[wit::Mutation::Update(wit::UpdateOp {
                table: "t".into(),
                key: vec![key[1].clone(), key[0].clone()],
                changes: vec![wit::Change::Set(cv("v", wit::Value::Bool(true)))],
            })],
        )
        .unwrap();
        assert_eq!(update.statements[0].params[..2], expected_key);
    }

    #[test]
    fn keys_compare_as_postgresql_compares_them() {
        assert_eq!(canonical_decimal("001.500"), "1.5");
        assert_eq!(canonical_decimal("-0.00"), "0");
        assert_eq!(canonical_decimal("-12"), "-12");
        assert_eq!(canonical_decimal("0.10"), "0.1");
        // Two upserts of one numeric key written differently never share a statement.
        let s = one_table(
            "accounts",
            &[
                ("id", wit::ColumnType::Text),
                ("balance", wit::ColumnType::Decimal),
                ("version", wit::ColumnType::S64),
            ],
            &["balance"],
        );
        let by_balance = |balance: &str| {
            wit::Mutation::Upsert(wit::UpsertOp {
                table: "accounts".into(),
                values: vec![
                    cv("id", wit::Value::Text("a".into())),
                    cv("balance", wit::Value::Decimal(balance.into())),
                    cv("version", wit::Value::S64(1)),
                ],
                accumulate: vec![],
                guard: vec![],
            })
        };
        let plan = plan(&s, &[by_balance("1.50"), by_balance("1.5")]).unwrap();
        assert_eq!(plan.statements.len(), 2);
    }

    #[test]
    fn errors_quote_component_names_bounded() {
        let huge = "t".repeat(1 << 20);
        let error = problem(wit::Mutation::Insert(wit::InsertOp {
            table: huge.clone(),
            values: vec![cv(&huge, wit::Value::Text(huge.clone()))],
        }));
        assert!(error.len() < 1024, "{}", error.len());
        let error = problem(wit::Mutation::Insert(wit::InsertOp {
            table: "accounts".into(),
            values: vec![cv(&huge, wit::Value::Null)],
        }));
        assert!(error.len() < 1024, "{}", error.len());
        let error = problem(wit::Mutation::Insert(wit::InsertOp {
            table: "accounts".into(),
            values: vec![cv("opened", wit::Value::Timestamp(huge))],
        }));
        assert!(error.len() < 1024, "{}", error.len());
    }

    #[test]
    fn decimals() {
        for ok in ["0", "-1", "100.00", "12345678901234567890.5"] {
            assert!(is_decimal(ok), "{ok}");
        }
        for bad in ["", "-", "1.", ".5", "1e3", "NaN", "1,5", "+1"] {
            assert!(!is_decimal(bad), "{bad}");
        }
    }
}

/// Property: whatever a component returns, the SQL the host builds touches only the tables the
/// component declared, in its own namespace. Mutations are generated from declared names,
/// host and system tables, other projections' tables, identifier-injection attempts and random
/// text; values are arbitrary.
#[cfg(test)]
mod escape_properties {
    use proptest::prelude::*;

    use super::*;

    const NAMESPACE: &str = "proj_p_v1";
    const DECLARED_TABLES: [&str; 2] = ["accounts", "entries"];
    const DECLARED_COLUMNS: [&str; 5] = ["id", "balance", "version", "note", "seq"];
    /// Names a hostile component might try; none is declared.
    const FOREIGN: [&str; 14] = [
        "wallets",
        "outbox",
        "events",
        "idempotency_keys",
        "projector_checkpoints",
        "projection_components",
        "public.wallets",
        "proj_other_v1.accounts",
        "proj_p_v1.accounts",
        "accounts\"; DROP TABLE wallets; --",
        "accounts\" , \"wallets",
        "id\" = 'x'; --",
        "pg_catalog.pg_class",
        "ACCOUNTS",
    ];
    /// Text no statement may contain: host, system and other schemas.
    const FORBIDDEN_IN_SQL: [&str; 9] = [
        "wallets",
        "outbox",
        "idempotency",
        "checkpoints",
        "projection_",
        "public",
        "pg_",
        "proj_other",
        ";",
    ];

    fn schema() -> ProjectionSchema {
        let col = |name: &str, type_, nullable| wit::Column {
            name: name.into(),
            type_,
            nullable,
        };
        let table = |name: &str, columns| wit::Table {
            name: name.into(),
            columns,
            primary_key: vec!["id".into()],
            indexes: vec![],
        };
        ProjectionSchema::from_info(&wit::ProjectionInfo {
            name: "p".into(),
            schema_version: 1,
            subscribes_to: vec!["*".into()],
            tables: vec![
                table(
                    "accounts",
                    vec![
                        col("id", wit::ColumnType::Text, false),
                        col("balance", wit::ColumnType::Decimal, false),
                        col("version", wit::ColumnType::S64, false),
                        col("note", wit::ColumnType::Text, true),
                    ],
                ),
                table(
                    "entries",
                    vec![
                        col("id", wit::ColumnType::Text, false),
                        col("seq", wit::ColumnType::S64, false),
                        col("note", wit::ColumnType::Json, true),
                    ],
                ),
            ],
        })
        .expect("valid declaration")
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::sample::select(DECLARED_TABLES.to_vec()).prop_map(str::to_owned),
            2 => prop::sample::select(FOREIGN.to_vec()).prop_map(str::to_owned),
            1 => "[a-z_\"; .-]{0,12}",
        ]
    }

    fn column() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => prop::sample::select(DECLARED_COLUMNS.to_vec()).prop_map(str::to_owned),
            1 => prop::sample::select(FOREIGN.to_vec()).prop_map(str::to_owned),
            1 => "[a-z_\"; ]{0,10}",
        ]
    }

    fn value() -> impl Strategy<Value = wit::Value> {
        prop_oneof![
            Just(wit::Value::Null),
            any::<bool>().prop_map(wit::Value::Bool),
            any::<i64>().prop_map(wit::Value::S64),
            any::<f64>().prop_map(wit::Value::F64),
            ".{0,16}".prop_map(wit::Value::Text),
            "-?[0-9]{1,6}(\\.[0-9]{1,3})?".prop_map(wit::Value::Decimal),
            ".{0,8}".prop_map(wit::Value::Decimal),
            "\\{\\}|\\[1\\]|.{0,6}".prop_map(wit::Value::Json),
        ]
    }

    fn cells() -> impl Strategy<Value = Vec<wit::ColumnValue>> {
        prop::collection::vec(
            (column(), value()).prop_map(|(column, value)| wit::ColumnValue { column, value }),
            0..5,
        )
    }

    fn mutation() -> impl Strategy<Value = wit::Mutation> {
        prop_oneof![
            (name(), cells()).prop_map(|(table, values)| {
                wit::Mutation::Insert(wit::InsertOp { table, values })
            }),
            (
                name(),
                cells(),
                prop::collection::vec(column(), 0..2),
                prop::collection::vec(column(), 0..2)
            )
                .prop_map(|(table, values, accumulate, guard)| {
                    wit::Mutation::Upsert(wit::UpsertOp {
                        table,
                        values,
                        accumulate,
                        guard,
                    })
                }),
            (name(), cells(), cells(), any::<bool>()).prop_map(|(table, key, set, add)| {
                let changes = set
                    .into_iter()
                    .map(|c| {
                        if add {
                            wit::Change::Add(c)
                        } else {
                            wit::Change::Set(c)
                        }
                    })
                    .collect();
                wit::Mutation::Update(wit::UpdateOp {
                    table,
                    key,
                    changes,
                })
            }),
            (name(), cells())
                .prop_map(|(table, key)| { wit::Mutation::Delete(wit::DeleteOp { table, key }) }),
        ]
    }

    /// The quoted identifiers of a statement, in order.
    fn quoted_identifiers(sql: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = sql;
        while let Some(start) = rest.find('"') {
            let after = &rest[start + 1..];
            let Some(end) = after.find('"') else {
                out.push(format!("<unterminated {after}>"));
                break;
            };
            out.push(after[..end].to_owned());
            rest = &after[end + 1..];
        }
        out
    }

    /// Well-typed cells for a declared table (names may still be foreign): keeps a good share
    /// of the generated batches valid, so the property is not checked only on rejections.
    fn typed_cells() -> impl Strategy<Value = Vec<wit::ColumnValue>> {
        (
            "[a-z0-9]{1,8}",
            "-?[0-9]{1,6}",
            any::<i64>(),
            prop::option::of(".{0,8}"),
            column(),
        )
            .prop_map(|(id, balance, version, note, extra)| {
                let cell = |column: &str, value| wit::ColumnValue {
                    column: column.into(),
                    value,
                };
                let mut cells = vec![
                    cell("id", wit::Value::Text(id)),
                    cell("balance", wit::Value::Decimal(balance)),
                    cell("version", wit::Value::S64(version)),
                ];
                if let Some(note) = note {
                    cells.push(cell(&extra, wit::Value::Text(note)));
                }
                cells
            })
    }

    fn typed_mutation() -> impl Strategy<Value = wit::Mutation> {
        let table = prop_oneof![
            8 => Just("accounts".to_owned()),
            1 => name(),
        ];
        (table, typed_cells(), any::<bool>()).prop_map(|(table, values, upsert)| {
            if upsert {
                wit::Mutation::Upsert(wit::UpsertOp {
                    table,
                    values,
                    accumulate: vec!["balance".into()],
                    guard: vec!["version".into()],
                })
            } else {
                wit::Mutation::Insert(wit::InsertOp { table, values })
            }
        })
    }

    #[test]
    fn no_output_reaches_outside_the_namespace() {
        let schema = schema();
        let accepted = std::cell::Cell::new(0_u32);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(3_000));
        let batches =
            prop::collection::vec(prop_oneof![1 => mutation(), 6 => typed_mutation()], 1..5);
        let outcome = runner.run(&batches, |mutations| {
            let undeclared = mutations.iter().any(|m| {
                let (_, table) = op_name(m);
                !DECLARED_TABLES.contains(&table)
            });
            let Ok(plan) = plan(&schema, &mutations) else {
                return Ok(());
            };
            accepted.set(accepted.get() + 1);
            prop_assert!(
                !undeclared,
                "a mutation on an undeclared table was accepted"
            );
            for statement in &plan.statements {
                let sql = &statement.sql;
                for identifier in quoted_identifiers(sql) {
                    prop_assert!(
                        identifier == NAMESPACE
                            || DECLARED_TABLES.contains(&identifier.as_str())
                            || DECLARED_COLUMNS.contains(&identifier.as_str()),
                        "foreign identifier {identifier:?} in {sql}"
                    );
                }
                let qualified: Vec<_> = sql.match_indices(&format!("\"{NAMESPACE}\".")).collect();
                prop_assert!(!qualified.is_empty(), "no table of the namespace in {sql}");
                for (at, prefix) in qualified {
                    let table = &sql[at + prefix.len()..];
                    prop_assert!(
                        DECLARED_TABLES
                            .iter()
                            .any(|t| table.starts_with(&format!("\"{t}\""))),
                        "undeclared table after the namespace in {sql}"
                    );
                }
                for forbidden in FORBIDDEN_IN_SQL {
                    prop_assert!(!sql.contains(forbidden), "{forbidden:?} in {sql}");
                }
            }
            Ok(())
        });
        if let Err(failure) = outcome {
            panic!("{failure}");
        }
        assert!(
            accepted.get() >= 300,
            "only {} of 3000 generated batches were valid: the property is barely exercised",
            accepted.get()
        );
    }
}

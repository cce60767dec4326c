//! Mutations returned by a component: validated against its declaration, then turned into
//! parameterised SQL by the host.
//!
//! Why it exists: the host never executes SQL text written by a component. A mutation names a
//! declared table and declared columns and carries typed values; anything else (unknown table or
//! column, a value of the wrong type, a missing key or NOT NULL column, `add` on a non-numeric
//! column, a value PostgreSQL would refuse) fails the call with a precise error. Consecutive
//! mutations of the same shape are applied as one `UNNEST` statement, so a batch costs a few
//! round trips, not one per row.
//!
//! Three steps, one module each: `validate` (a mutation against the declaration, into a typed
//! row), `plan` (rows into statements) and `apply` (statements on a connection, and the
//! data errors PostgreSQL can still raise). This file holds what they share and the output budget.
//!
//! Architecture invariant: only declared tables of the projection's own namespace appear in the
//! SQL, every name quoted, every value a bound parameter. API boundary: no component, no worker;
//! it turns values into statements and runs them on the connection it is given.

mod apply;
mod plan;
mod validate;

pub use apply::{apply, apply_or_reject, data_rejection, DATA_ERROR_CLASSES};
pub use plan::plan;
pub use validate::{NUMERIC_MAX_FRACTION_DIGITS, NUMERIC_MAX_INTEGER_DIGITS};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::schema::ColumnType;
use wallex_sandbox::engine::wit;

/// Most mutations one `handle` call may return.
pub const MAX_MUTATIONS_PER_BATCH: usize = 100_000;
/// Most rows applied by one statement.
pub const MAX_ROWS_PER_STATEMENT: usize = 5_000;
/// Longest accepted decimal text.
pub const MAX_DECIMAL_LEN: usize = 200;

/// Why a batch's mutations were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MutationError {
    /// The call returned more than [`MAX_MUTATIONS_PER_BATCH`] mutations.
    #[error("the batch returned {0} mutations, more than {MAX_MUTATIONS_PER_BATCH}")]
    TooMany(usize),
    /// The call returned more mutations than the projection's limit.
    #[error("the call returned {count} mutations, more than the limit of {limit}")]
    OverCount {
        /// Mutations the call returned.
        count: usize,
        /// The projection's `max_mutations`.
        limit: usize,
    },
    /// The names and values of the call's mutations exceed the projection's byte limit.
    #[error("the call returned more than {limit} bytes of mutations")]
    OverBytes {
        /// The projection's `max_batch_bytes`.
        limit: usize,
    },
    /// A mutation does not fit the declaration.
    #[error("mutation #{index} ({op} on table {table}): {problem}")]
    Invalid {
        /// Position of the mutation in the call's output, from 0.
        index: usize,
        /// The operation: `insert`, `upsert`, `update` or `delete`.
        op: &'static str,
        /// The table the mutation names, quoted as the component gave it.
        table: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// A batch's mutations as statements ready to run, in order.
#[derive(Debug, Default)]
pub struct Plan {
    /// The statements, in the order of the mutations they carry.
    pub statements: Vec<Statement>,
}

/// One parameterised statement: `sql` uses `$1..$n`, one array per parameter, all of equal length.
#[derive(Debug)]
pub struct Statement {
    /// The statement's SQL, built by the host from declared names.
    pub sql: String,
    /// One array per parameter `$1..$n`, in order.
    pub params: Vec<ColumnArray>,
    /// Rows (validated mutations) the statement carries: the length of every array.
    pub rows: usize,
}

/// A parameter: one typed array of column values.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnArray {
    /// `bool` columns.
    Bool(Vec<Option<bool>>),
    /// `s64` columns.
    I64(Vec<Option<i64>>),
    /// `f64` columns.
    F64(Vec<Option<f64>>),
    /// text, decimal (cast to numeric) and json (cast to jsonb).
    Text(Vec<Option<String>>),
    /// `timestamp` columns, parsed.
    Timestamp(Vec<Option<DateTime<Utc>>>),
    /// `uuid` columns, parsed.
    Uuid(Vec<Option<Uuid>>),
    /// `bytes` columns.
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
pub(crate) enum SqlValue {
    Bool(Option<bool>),
    I64(Option<i64>),
    F64(Option<f64>),
    Text(Option<String>),
    Timestamp(Option<DateTime<Utc>>),
    Uuid(Option<Uuid>),
    Bytes(Option<Vec<u8>>),
}

/// What makes two mutations share one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Shape {
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

/// One validated mutation: its shape and its parameter values (in `Shape::params` order).
pub(crate) struct Row {
    pub(crate) shape: Shape,
    pub(crate) values: Vec<SqlValue>,
    pub(crate) key: String,
    /// The guard's values when it is made of `s64` columns only (rows may then combine).
    pub(crate) guard: Option<Vec<i64>>,
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

#[cfg(test)]
mod tests;

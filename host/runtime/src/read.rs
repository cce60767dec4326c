//! One row of a projection's table, read by its key: what the read-after-write API
//! (`GET /projections/{projection}/{table}/{key}`) answers.
//!
//! Why it exists: the HTTP crate builds no SQL. The key is typed by its column here and bound as a
//! parameter; the relation is the table's stable view, quoted.
//!
//! API boundary: the row is PostgreSQL's `to_jsonb` of it, handed on as the database made it (no
//! JSON shape is decided here); the caller found the table and waited for the position it needs.

use sqlx::PgPool;

use crate::schema::{quote, ColumnSchema, ColumnType, ProjectionSchema, TableSchema};
use wallex_sandbox::guest_text::quoted;

/// Why a row cannot be read by the key given (all but [`ReadError::Database`] are the caller's
/// mistake).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The table's primary key has more than one column.
    #[error("table {0} has a composite primary key and cannot be read by key")]
    CompositeKey(String),
    /// The key column is `s64` and the key is not an integer (the key, quoted).
    #[error("key {0} is not an integer")]
    NotAnInteger(String),
    /// The key column is `uuid` and the key is not one (the key, quoted).
    #[error("key {0} is not a UUID")]
    NotAUuid(String),
    /// A text key with a NUL: PostgreSQL's text cannot hold it, so no row has it.
    #[error("key contains a NUL character, which no text key can hold")]
    Nul,
    /// The key column's type cannot be written in a URL path segment (its name).
    #[error("tables keyed by {0} cannot be read by key")]
    UnsupportedKey(&'static str),
    /// The query failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The one column of `table`'s primary key.
pub fn key_column(table: &TableSchema) -> Result<&ColumnSchema, ReadError> {
    match table.primary_key.as_slice() {
        [column] => Ok(&table.columns[*column]),
        _ => Err(ReadError::CompositeKey(table.name.clone())),
    }
}

/// The row of `table` (of `schema`, read through its stable view) whose key `column` (see
/// [`key_column`]) is `key`, as PostgreSQL's `to_jsonb` of it; `None` when there is none.
pub async fn row_by_key(
    pool: &PgPool,
    schema: &ProjectionSchema,
    table: &TableSchema,
    column: &ColumnSchema,
    key: &str,
) -> Result<Option<serde_json::Value>, ReadError> {
    let sql = format!(
        "SELECT to_jsonb(t) FROM {} AS t WHERE {} = $1",
        schema.stable_qualified(table),
        quote(&column.name)
    );
    let query = sqlx::query_scalar::<_, serde_json::Value>(&sql);
    let query = match column.ty {
        ColumnType::S64 => query.bind(
            key.parse::<i64>()
                .map_err(|_| ReadError::NotAnInteger(quoted(key)))?,
        ),
        ColumnType::Uuid => {
            query.bind(uuid::Uuid::parse_str(key).map_err(|_| ReadError::NotAUuid(quoted(key)))?)
        }
        ColumnType::Text if key.contains('\0') => return Err(ReadError::Nul),
        ColumnType::Text => query.bind(key.to_owned()),
        other => return Err(ReadError::UnsupportedKey(other.name())),
    };
    Ok(query.fetch_optional(pool).await?)
}

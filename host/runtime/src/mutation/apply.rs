//! Statements on a connection, inside the caller's transaction, and the data errors PostgreSQL
//! can still raise for validated values.

use sqlx::PgConnection;

use super::{ColumnArray, Plan};

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
                wallex_sandbox::guest_text::clip(
                    db.message(),
                    wallex_sandbox::guest_text::MAX_MESSAGE_BYTES
                )
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

//! One-stream repair (the reference design's `rebuildWalletReadModel(walletId)`): re-derive only
//! the rows one stream owns, in one transaction.
//!
//! Why it exists: a drift found in one wallet should not cost a rebuild of millions of rows. A
//! projection can be repaired one stream at a time when its component says which rows each
//! stream owns: a component of the `wallex:projection@0.2.0` world exports `stream-owners`, a
//! text column per table (leading its key or an index) whose value, after a prefix, is the
//! owning stream's id. Components of 0.1.0 keep working; a repair of one of their streams answers
//! with the reason ([`OperationError::Conflict`], `409` over HTTP).
//!
//! How, in one transaction: lock the live checkpoint (no batch commits meanwhile, and the repair
//! sees the tables at exactly that checkpoint), read the stream's events up to it, run them
//! through the live component on a guest thread, check that every mutation stays within the
//! stream's rows, delete those rows from every table and apply the mutations. The repair waits
//! at most [`LOCK_TIMEOUT`] for a row a running batch holds, then gives way to that batch and
//! tries again, at most [`ATTEMPTS`] times.
//!
//! Architecture invariant: rows owned by other streams are never touched. API boundary: it
//! knows the declared owner columns, not what the tables mean.

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::Connection;

use crate::outcome::OperationError;
use crate::Projections;
use wallex_core::outbox;
use wallex_runtime::guest_event::to_guest_event;
use wallex_runtime::mutation;
use wallex_runtime::schema::{quote, ProjectionSchema};
use wallex_runtime::worker::BatchError;
use wallex_runtime::{checkpoint, registry};
use wallex_sandbox::engine::wit;

/// Most events of one stream a repair replays (they go to the component in one call).
pub const MAX_STREAM_EVENTS: u32 = 10_000;
/// Longest a repair waits for a row lock a running batch holds before it gives way.
pub const LOCK_TIMEOUT: Duration = Duration::from_millis(200);
/// Tries of a repair that keeps giving way to batches.
pub const ATTEMPTS: u32 = 5;
/// Most bytes of a stream id.
pub const MAX_STREAM_ID_BYTES: usize = 256;

/// What a one-stream repair did.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamRepair {
    /// The stream repaired.
    pub stream: String,
    /// Its events replayed (those the projection subscribes to).
    pub events: usize,
    /// The live checkpoint's position the rows now reflect.
    pub position: i64,
    /// Rows deleted before the replay's were written.
    pub rows_deleted: u64,
    /// Rows the replay wrote.
    pub rows_written: u64,
    /// How long the transaction that committed took, in milliseconds.
    pub millis: f64,
}

/// Which rows of one table a stream owns: `column = value`.
struct Owned {
    table: usize,
    column: usize,
    /// `None`: the stream id does not start with the table's prefix, so it owns none of its rows.
    value: Option<String>,
}

impl Projections {
    /// Re-derives the rows `stream` owns in projection `name` (see the module docs).
    pub async fn repair_stream(
        &self,
        name: &str,
        stream: &str,
        actor: &str,
    ) -> Result<StreamRepair, OperationError> {
        if stream.is_empty() || stream.len() > MAX_STREAM_ID_BYTES {
            return Err(OperationError::Conflict(format!(
                "a stream id has 1 to {MAX_STREAM_ID_BYTES} bytes"
            )));
        }
        let deployment = self.deployed(name).await?;
        let projector = self
            .get(name)
            .ok_or_else(|| OperationError::NotFound(name.to_owned()))?;
        let version = projector.active();
        if version.sha256 != deployment.sha256 {
            return Err(OperationError::Conflict(format!(
                "{name} is changing version; try again in a moment"
            )));
        }
        let owned = owned_rows(&version.schema, stream)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.repair_once(name, stream, &projector, &version, &owned).await {
                Err(RepairFailure::LockTimeout) if attempt < ATTEMPTS => {
                    tracing::debug!(projection = name, stream, attempt, "repair gave way to a batch");
                    tokio::time::sleep(LOCK_TIMEOUT).await;
                }
                Err(RepairFailure::LockTimeout) => {
                    return Err(OperationError::Conflict(format!(
                        "the rows of {stream} stayed locked by {name}'s batches through {ATTEMPTS} tries; try again"
                    )))
                }
                Err(RepairFailure::Other(error)) => return Err(error),
                Ok(repair) => {
                    let mut conn = self.pool().acquire().await?;
                    registry::record_action(
                        &mut conn,
                        actor,
                        "repair-stream",
                        Some(name),
                        "ok",
                        &json!({
                            "stream": stream,
                            "events": repair.events,
                            "position": repair.position,
                            "rowsDeleted": repair.rows_deleted,
                            "rowsWritten": repair.rows_written,
                        }),
                    )
                    .await?;
                    tracing::info!(
                        projection = name,
                        stream,
                        events = repair.events,
                        rows_deleted = repair.rows_deleted,
                        rows_written = repair.rows_written,
                        "stream repaired"
                    );
                    return Ok(repair);
                }
            }
        }
    }

    async fn repair_once(
        &self,
        name: &str,
        stream: &str,
        projector: &wallex_runtime::worker::Projector,
        version: &wallex_runtime::worker::Active,
        owned: &[Owned],
    ) -> Result<StreamRepair, RepairFailure> {
        let schema = &version.schema;
        let started = Instant::now();
        let mut conn = self.pool().acquire().await.map_err(RepairFailure::db)?;
        let mut tx = conn.begin().await.map_err(RepairFailure::db)?;
        sqlx::query(&format!(
            "SET LOCAL lock_timeout = {}",
            LOCK_TIMEOUT.as_millis()
        ))
        .execute(&mut *tx)
        .await
        .map_err(RepairFailure::db)?;
        let live = checkpoint::lock_in(&mut tx, name)
            .await
            .map_err(RepairFailure::checkpoint)?
            .ok_or_else(|| OperationError::NotFound(name.to_owned()))?;
        if live.namespace != schema.namespace {
            return Err(OperationError::Conflict(format!(
                "{name} is changing tables; try again in a moment"
            ))
            .into());
        }
        let events =
            outbox::read_stream_until(&mut *tx, stream, live.cursor, MAX_STREAM_EVENTS + 1)
                .await
                .map_err(OperationError::from)?;
        if events.len() > MAX_STREAM_EVENTS as usize {
            return Err(OperationError::Conflict(format!(
                "{stream} has more than {MAX_STREAM_EVENTS} events: repair the whole projection"
            ))
            .into());
        }
        let batch: Vec<wit::Event> = events
            .iter()
            .filter(|e| schema.subscriptions.includes(&e.event_type))
            .map(to_guest_event)
            .collect();
        let (mutations, plan) = if batch.is_empty() {
            (Vec::new(), mutation::Plan::default())
        } else {
            projector
                .evaluate_all(version, batch.clone())
                .await
                .map_err(|e| component_refused(name, stream, &e))?
        };
        check_ownership(schema, owned, &mutations)
            .map_err(|message| OperationError::Conflict(format!(
                "{name}'s component wrote outside the rows of {stream} while replaying it: {message}"
            )))?;
        let mut rows_deleted = 0;
        for owner in owned {
            let Some(value) = &owner.value else { continue };
            let table = &schema.tables[owner.table];
            rows_deleted += sqlx::query(&format!(
                "DELETE FROM {} WHERE {} = $1",
                schema.qualified(table),
                quote(&table.columns[owner.column].name)
            ))
            .bind(value)
            .execute(&mut *tx)
            .await
            .map_err(RepairFailure::db)?
            .rows_affected();
        }
        let rows_written = mutation::apply(&mut tx, &plan)
            .await
            .map_err(RepairFailure::db)?;
        tx.commit().await.map_err(RepairFailure::db)?;
        Ok(StreamRepair {
            stream: stream.to_owned(),
            events: batch.len(),
            position: live.cursor.position,
            rows_deleted,
            rows_written,
            millis: started.elapsed().as_secs_f64() * 1000.0,
        })
    }
}

/// Why one try of a repair failed.
enum RepairFailure {
    /// A row stayed locked past [`LOCK_TIMEOUT`]: give way and try again.
    LockTimeout,
    Other(OperationError),
}

impl RepairFailure {
    fn db(error: sqlx::Error) -> Self {
        let lock_not_available = error
            .as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|code| code == "55P03");
        if lock_not_available {
            Self::LockTimeout
        } else {
            Self::Other(error.into())
        }
    }

    fn checkpoint(error: checkpoint::CheckpointError) -> Self {
        match error {
            checkpoint::CheckpointError::Database(error) => Self::db(error),
            other => Self::Other(other.into()),
        }
    }
}

impl From<OperationError> for RepairFailure {
    fn from(error: OperationError) -> Self {
        Self::Other(error)
    }
}

fn component_refused(name: &str, stream: &str, error: &BatchError) -> RepairFailure {
    RepairFailure::Other(OperationError::Conflict(format!(
        "{name}'s component fails on the events of {stream}: {error}"
    )))
}

/// Which rows of each table `stream` owns, or why the projection cannot say.
fn owned_rows(schema: &ProjectionSchema, stream: &str) -> Result<Vec<Owned>, OperationError> {
    let Some(owners) = &schema.stream_owners else {
        return Err(OperationError::Conflict(format!(
            "{} cannot be repaired one stream at a time: its component implements \
             wallex:projection@0.1.0, which does not say which rows a stream owns (a 0.2.0 \
             component exports stream-owners); repair the whole projection instead",
            schema.name
        )));
    };
    let unowned: Vec<&str> = schema
        .tables
        .iter()
        .enumerate()
        .filter(|(i, _)| !owners.iter().any(|o| o.table == *i))
        .map(|(_, t)| t.name.as_str())
        .collect();
    if !unowned.is_empty() {
        return Err(OperationError::Conflict(format!(
            "{} cannot be repaired one stream at a time: its component does not say which \
             stream owns the rows of {}; repair the whole projection instead",
            schema.name,
            unowned.join(", ")
        )));
    }
    Ok(owners
        .iter()
        .map(|o| Owned {
            table: o.table,
            column: o.column,
            value: stream.strip_prefix(&o.stream_prefix).map(str::to_owned),
        })
        .collect())
}

/// Whether every mutation names a row of the stream: its owner column, in the values written or
/// the key, holding the stream's value (and no change sets it to another).
fn check_ownership(
    schema: &ProjectionSchema,
    owned: &[Owned],
    mutations: &[wit::Mutation],
) -> Result<(), String> {
    for m in mutations {
        let (table, named, changes) = match m {
            wit::Mutation::Insert(op) => (&op.table, &op.values, None),
            wit::Mutation::Upsert(op) => (&op.table, &op.values, None),
            wit::Mutation::Update(op) => (&op.table, &op.key, Some(&op.changes)),
            wit::Mutation::Delete(op) => (&op.table, &op.key, None),
        };
        let Some(owner) = owned.iter().find(|o| schema.tables[o.table].name == *table) else {
            // Not a declared table: the plan has already refused it.
            continue;
        };
        let column = &schema.tables[owner.table].columns[owner.column].name;
        let holds = |value: &wit::Value| matches!((value, &owner.value), (wit::Value::Text(v), Some(own)) if v == own);
        let names_own_row = named
            .iter()
            .any(|cv| cv.column == *column && holds(&cv.value));
        let moves_row = changes.is_some_and(|changes| {
            changes.iter().any(|c| match c {
                wit::Change::Set(cv) | wit::Change::Add(cv) => {
                    cv.column == *column && !holds(&cv.value)
                }
            })
        });
        if !names_own_row || moves_row {
            return Err(format!(
                "a mutation of table {table} names another stream's row"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wallex_sandbox::engine::StreamOwner;

    fn schema(owners: Option<Vec<StreamOwner>>) -> Result<ProjectionSchema, String> {
        let col = |name: &str, type_| wit::Column {
            name: name.into(),
            type_,
            nullable: false,
        };
        let table = |name: &str, key: &str| wit::Table {
            name: name.into(),
            columns: vec![
                col("wallet_id", wit::ColumnType::Text),
                col("seq", wit::ColumnType::S64),
                col("note", wit::ColumnType::Text),
            ],
            primary_key: if key == "seq" {
                vec!["seq".into(), "wallet_id".into()]
            } else {
                vec![key.into(), "seq".into()]
            },
            indexes: vec![wit::Index {
                name: format!("{name}_by_note"),
                columns: vec!["note".into()],
                unique: false,
            }],
        };
        ProjectionSchema::from_info(&wit::ProjectionInfo {
            name: "p".into(),
            schema_version: 1,
            subscribes_to: vec!["*".into()],
            tables: vec![table("entries", "wallet_id"), table("notes", "seq")],
        })
        .and_then(|s| s.with_stream_owners(owners.as_deref()))
        .map_err(|e| e.to_string())
    }

    fn owner(table: &str, column: &str) -> StreamOwner {
        StreamOwner {
            table: table.into(),
            column: column.into(),
            stream_prefix: "wallet-".into(),
        }
    }

    fn upsert(table: &str, wallet: &str) -> wit::Mutation {
        wit::Mutation::Upsert(wit::UpsertOp {
            table: table.into(),
            values: vec![
                wit::ColumnValue {
                    column: "wallet_id".into(),
                    value: wit::Value::Text(wallet.into()),
                },
                wit::ColumnValue {
                    column: "seq".into(),
                    value: wit::Value::S64(1),
                },
            ],
            accumulate: vec![],
            guard: vec![],
        })
    }

    #[test]
    fn owner_columns_must_be_declared_text_and_lead_a_key_or_index() {
        let ok = schema(Some(vec![
            owner("entries", "wallet_id"),
            owner("notes", "note"),
        ]));
        assert!(ok.is_ok(), "{ok:?}");
        let refused = |owners, needle: &str| {
            let error = schema(Some(owners)).expect_err("refused");
            assert!(error.contains(needle), "{error}");
        };
        refused(vec![owner("nope", "wallet_id")], "no table");
        refused(vec![owner("entries", "nope")], "has no column");
        refused(vec![owner("entries", "seq")], "must be a text column");
        // `notes.wallet_id` leads neither its key (seq, …) nor an index.
        refused(vec![owner("notes", "wallet_id")], "first column");
        refused(
            vec![owner("entries", "wallet_id"), owner("entries", "wallet_id")],
            "named twice",
        );
        let mut bad_prefix = owner("entries", "wallet_id");
        bad_prefix.stream_prefix = "wallet \n".into();
        refused(vec![bad_prefix], "visible ASCII");
    }

    #[test]
    fn a_projection_that_cannot_say_which_rows_a_stream_owns_is_refused_with_the_reason() {
        let old = schema(None).expect("0.1.0");
        let error = owned_rows(&old, "wallet-a")
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("wallex:projection@0.1.0"), "{error}");
        let partial = schema(Some(vec![owner("entries", "wallet_id")])).expect("valid");
        let error = owned_rows(&partial, "wallet-a")
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("owns the rows of notes"), "{error}");
    }

    #[test]
    fn mutations_must_stay_within_the_streams_rows() {
        let schema = {
            let col = |name: &str| wit::Column {
                name: name.into(),
                type_: wit::ColumnType::Text,
                nullable: false,
            };
            ProjectionSchema::from_info(&wit::ProjectionInfo {
                name: "p".into(),
                schema_version: 1,
                subscribes_to: vec!["*".into()],
                tables: vec![wit::Table {
                    name: "entries".into(),
                    columns: vec![col("wallet_id"), col("seq")],
                    primary_key: vec!["wallet_id".into(), "seq".into()],
                    indexes: vec![],
                }],
            })
            .and_then(|s| s.with_stream_owners(Some(&[owner("entries", "wallet_id")])))
            .expect("valid")
        };
        let owned = owned_rows(&schema, "wallet-a").expect("owned");
        assert_eq!(owned[0].value.as_deref(), Some("a"));
        assert!(check_ownership(&schema, &owned, &[upsert("entries", "a")]).is_ok());
        let error = check_ownership(
            &schema,
            &owned,
            &[upsert("entries", "a"), upsert("entries", "b")],
        )
        .expect_err("another stream's row");
        assert!(error.contains("another stream's row"), "{error}");
        // An update that moves the row to another stream, and a delete without the owner.
        let update = wit::Mutation::Update(wit::UpdateOp {
            table: "entries".into(),
            key: vec![wit::ColumnValue {
                column: "wallet_id".into(),
                value: wit::Value::Text("a".into()),
            }],
            changes: vec![wit::Change::Set(wit::ColumnValue {
                column: "wallet_id".into(),
                value: wit::Value::Text("b".into()),
            })],
        });
        assert!(check_ownership(&schema, &owned, &[update]).is_err());
        let delete = wit::Mutation::Delete(wit::DeleteOp {
            table: "entries".into(),
            key: vec![wit::ColumnValue {
                column: "seq".into(),
                value: wit::Value::Text("1".into()),
            }],
        });
        assert!(check_ownership(&schema, &owned, &[delete]).is_err());
        // A stream without the prefix owns no row: any mutation is outside it.
        let none = owned_rows(&schema, "account-a").expect("owned");
        assert_eq!(none[0].value, None);
        assert!(check_ownership(&schema, &none, &[upsert("entries", "a")]).is_err());
    }
}

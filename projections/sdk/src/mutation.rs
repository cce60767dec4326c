//! What `handle` returns: [`Mutation`]s, built with [`Insert`], [`Upsert`], [`Update`] and
//! [`Delete`].
//!
//! Each builder converts into a [`Mutation`] with `.into()`. Values are kept in the order they
//! are given; the host applies the mutations in the order returned (and turns consecutive
//! mutations of one shape into one statement).
//!
//! ```
//! use wallex_projection_sdk::{Delete, Insert, Mutation, Update, Upsert, Value};
//!
//! let mutations: Vec<Mutation> = vec![
//!     Insert::into("seen").set("id", "w1").into(),
//!     Upsert::into("totals")
//!         .set("owner", "o1")
//!         .accumulate("count", 1)
//!         .set("version", 7)
//!         .guard(["version"])
//!         .into(),
//!     Update::table("totals").key("owner", "o1").set("note", Value::Null).add("count", 2).into(),
//!     Delete::from("seen").key("id", "w0").into(),
//! ];
//! assert_eq!(mutations.len(), 4);
//! ```

use crate::value::Value;

/// One change to the projection's tables.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// See [`Insert`].
    Insert(Insert),
    /// See [`Upsert`].
    Upsert(Upsert),
    /// See [`Update`].
    Update(Update),
    /// See [`Delete`].
    Delete(Delete),
}

/// `INSERT`: fails the batch if a row with the same primary key exists.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Insert {
    /// The table.
    pub table: String,
    /// `(column, value)` pairs, in order.
    pub values: Vec<(String, Value)>,
}

impl Insert {
    /// An insert into `table` with no values yet.
    pub fn into(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            values: Vec::new(),
        }
    }

    /// Sets `column` to `value`.
    pub fn set(mut self, column: impl Into<String>, value: impl Into<Value>) -> Self {
        self.values.push((column.into(), value.into()));
        self
    }
}

/// `INSERT`, or on a primary-key conflict an update of the existing row.
///
/// On conflict, columns given with [`accumulate`](Self::accumulate) become `existing + new`
/// (numeric columns) and the other non-key columns given with [`set`](Self::set) become the new
/// value. With a [`guard`](Self::guard) (NOT NULL columns), the update only happens when the
/// existing row's guard columns are lower, compared as a row, than the new values: replaying an
/// event then changes nothing.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Upsert {
    /// The table.
    pub table: String,
    /// `(column, value)` pairs, in order (accumulated columns included).
    pub values: Vec<(String, Value)>,
    /// Columns that accumulate on conflict.
    pub accumulate: Vec<String>,
    /// Columns that guard the conflict update.
    pub guard: Vec<String>,
}

impl Upsert {
    /// An upsert into `table` with no values yet.
    pub fn into(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            values: Vec::new(),
            accumulate: Vec::new(),
            guard: Vec::new(),
        }
    }

    /// Sets `column` to `value` (on conflict too).
    pub fn set(mut self, column: impl Into<String>, value: impl Into<Value>) -> Self {
        self.values.push((column.into(), value.into()));
        self
    }

    /// Sets `column` to `value` on insert, and adds `value` to the existing one on conflict.
    pub fn accumulate(mut self, column: impl Into<String>, value: impl Into<Value>) -> Self {
        let column = column.into();
        self.accumulate.push(column.clone());
        self.values.push((column, value.into()));
        self
    }

    /// Updates on conflict only if the existing row's `columns` are lower than the new values.
    pub fn guard<I>(mut self, columns: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.guard.extend(columns.into_iter().map(Into::into));
        self
    }
}

/// One change of an [`Update`].
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// `column = value`.
    Set(String, Value),
    /// `column = column + value` (`s64`, `f64` or `decimal`).
    Add(String, Value),
}

/// `UPDATE` of the row with this primary key; no such row is not an error.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Update {
    /// The table.
    pub table: String,
    /// The complete primary key, as `(column, value)` pairs.
    pub key: Vec<(String, Value)>,
    /// The changes, in order.
    pub changes: Vec<Change>,
}

impl Update {
    /// An update of `table` with no key or changes yet.
    pub fn table(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            key: Vec::new(),
            changes: Vec::new(),
        }
    }

    /// Adds a primary-key column's value.
    pub fn key(mut self, column: impl Into<String>, value: impl Into<Value>) -> Self {
        self.key.push((column.into(), value.into()));
        self
    }

    /// `column = value`.
    pub fn set(mut self, column: impl Into<String>, value: impl Into<Value>) -> Self {
        self.changes.push(Change::Set(column.into(), value.into()));
        self
    }

    /// `column = column + value`.
    pub fn add(mut self, column: impl Into<String>, value: impl Into<Value>) -> Self {
        self.changes.push(Change::Add(column.into(), value.into()));
        self
    }
}

/// `DELETE` of the row with this primary key; no such row is not an error.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Delete {
    /// The table.
    pub table: String,
    /// The complete primary key, as `(column, value)` pairs.
    pub key: Vec<(String, Value)>,
}

impl Delete {
    /// A delete from `table` with no key yet.
    pub fn from(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            key: Vec::new(),
        }
    }

    /// Adds a primary-key column's value.
    pub fn key(mut self, column: impl Into<String>, value: impl Into<Value>) -> Self {
        self.key.push((column.into(), value.into()));
        self
    }
}

impl From<Insert> for Mutation {
    fn from(insert: Insert) -> Self {
        Mutation::Insert(insert)
    }
}

impl From<Upsert> for Mutation {
    fn from(upsert: Upsert) -> Self {
        Mutation::Upsert(upsert)
    }
}

impl From<Update> for Mutation {
    fn from(update: Update) -> Self {
        Mutation::Update(update)
    }
}

impl From<Delete> for Mutation {
    fn from(delete: Delete) -> Self {
        Mutation::Delete(delete)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(values: &[(String, Value)]) -> Vec<(&str, &Value)> {
        values.iter().map(|(c, v)| (c.as_str(), v)).collect()
    }

    #[test]
    fn an_upsert_keeps_value_order_and_lists_accumulated_and_guard_columns() {
        let upsert = Upsert::into("balances")
            .set("account", "a")
            .accumulate("balance", Value::decimal("1.5"))
            .set("last_xact_id", 3)
            .set("last_position", 4)
            .guard(["last_xact_id", "last_position"]);
        assert_eq!(upsert.table, "balances");
        assert_eq!(
            pairs(&upsert.values),
            [
                ("account", &Value::Text("a".into())),
                ("balance", &Value::Decimal("1.5".into())),
                ("last_xact_id", &Value::S64(3)),
                ("last_position", &Value::S64(4)),
            ]
        );
        assert_eq!(upsert.accumulate, ["balance"]);
        assert_eq!(upsert.guard, ["last_xact_id", "last_position"]);
        let plain = Upsert::into("t").set("k", 1);
        assert!(plain.accumulate.is_empty() && plain.guard.is_empty());
    }

    #[test]
    fn insert_update_and_delete_build_what_they_say() {
        let insert: Mutation = Insert::into("t").set("k", "v").into();
        assert_eq!(
            insert,
            Mutation::Insert(Insert {
                table: "t".into(),
                values: vec![("k".into(), Value::Text("v".into()))],
            })
        );
        let update = Update::table("t")
            .key("k", "v")
            .key("n", 2)
            .set("a", true)
            .add("b", 1.5);
        assert_eq!(
            pairs(&update.key),
            [("k", &Value::Text("v".into())), ("n", &Value::S64(2))]
        );
        assert_eq!(
            update.changes,
            [
                Change::Set("a".into(), Value::Bool(true)),
                Change::Add("b".into(), Value::F64(1.5)),
            ]
        );
        let delete: Mutation = Delete::from("t").key("k", "v").into();
        assert_eq!(
            delete,
            Mutation::Delete(Delete {
                table: "t".into(),
                key: vec![("k".into(), Value::Text("v".into()))],
            })
        );
        assert!(matches!(Mutation::from(update), Mutation::Update(_)));
    }
}

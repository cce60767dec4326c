//! What a projection declares: its name, schema version, subscriptions and tables
//! ([`ProjectionInfo`], [`Table`], [`Column`], [`Index`]), and which rows a stream owns
//! ([`StreamOwner`], 0.2.0 world only).
//!
//! The builders only collect; the host validates the declaration when it loads the component
//! (names, types, keys, collisions) and refuses it with a message naming what is wrong.

/// A column's type. Host mapping: `Bool`=`BOOLEAN`, `S64`=`BIGINT`, `F64`=`DOUBLE PRECISION`,
/// `Text`=`TEXT`, `Decimal`=`NUMERIC`, `Json`=`JSONB`, `Timestamp`=`TIMESTAMPTZ`, `Uuid`=`UUID`,
/// `Bytes`=`BYTEA`.
///
/// `use wallex_projection_sdk::ColumnType::*;` lets a table read `.column("id", Text)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnType {
    /// `BOOLEAN`.
    Bool,
    /// `BIGINT`.
    S64,
    /// `DOUBLE PRECISION`.
    F64,
    /// `TEXT`.
    Text,
    /// `NUMERIC`.
    Decimal,
    /// `JSONB`.
    Json,
    /// `TIMESTAMPTZ`.
    Timestamp,
    /// `UUID`.
    Uuid,
    /// `BYTEA`.
    Bytes,
}

/// A column of a [`Table`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Column {
    /// `[a-z][a-z0-9_]{0,62}`.
    pub name: String,
    /// Its type.
    pub column_type: ColumnType,
    /// Whether it accepts [`Value::Null`](crate::Value::Null) (never for key columns).
    pub nullable: bool,
}

impl Column {
    /// A NOT NULL column.
    pub fn new(name: impl Into<String>, column_type: ColumnType) -> Self {
        Self {
            name: name.into(),
            column_type,
            nullable: false,
        }
    }

    /// The same column, nullable.
    pub fn nullable(mut self) -> Self {
        self.nullable = true;
        self
    }
}

/// A secondary index of a [`Table`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Index {
    /// `[a-z][a-z0-9_]{0,62}`, unique within the projection (tables, indexes and primary keys
    /// share one namespace).
    pub name: String,
    /// The indexed columns, in order.
    pub columns: Vec<String>,
    /// Whether it is a `UNIQUE` index.
    pub unique: bool,
}

/// A table the projection owns, created in its schema `proj_<name>_v<schema-version>`.
///
/// ```
/// use wallex_projection_sdk::{ColumnType::*, Table};
///
/// let wallets = Table::new("wallets")
///     .column("id", Text)
///     .column("owner", Text)
///     .nullable_column("note", Text)
///     .primary_key(["id"])
///     .index("wallets_by_owner", ["owner"]);
/// assert_eq!(wallets.columns.len(), 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Table {
    /// `[a-z][a-z0-9_]{0,62}`.
    pub name: String,
    /// The columns, in declaration order.
    pub columns: Vec<Column>,
    /// The primary key's columns: must not be empty; they are implicitly NOT NULL.
    pub primary_key: Vec<String>,
    /// Secondary indexes.
    pub indexes: Vec<Index>,
}

impl Table {
    /// A table with no columns yet.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            columns: Vec::new(),
            primary_key: Vec::new(),
            indexes: Vec::new(),
        }
    }

    /// Adds a NOT NULL column.
    pub fn column(self, name: impl Into<String>, column_type: ColumnType) -> Self {
        self.with_column(Column::new(name, column_type))
    }

    /// Adds a nullable column.
    pub fn nullable_column(self, name: impl Into<String>, column_type: ColumnType) -> Self {
        self.with_column(Column::new(name, column_type).nullable())
    }

    /// Adds a column built with [`Column::new`].
    pub fn with_column(mut self, column: Column) -> Self {
        self.columns.push(column);
        self
    }

    /// Sets the primary key's columns.
    pub fn primary_key<I>(mut self, columns: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.primary_key = columns.into_iter().map(Into::into).collect();
        self
    }

    /// Adds a non-unique index.
    pub fn index<I>(self, name: impl Into<String>, columns: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.add_index(name.into(), columns, false)
    }

    /// Adds a unique index.
    pub fn unique_index<I>(self, name: impl Into<String>, columns: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.add_index(name.into(), columns, true)
    }

    fn add_index<I>(mut self, name: String, columns: I, unique: bool) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.indexes.push(Index {
            name,
            columns: columns.into_iter().map(Into::into).collect(),
            unique,
        });
        self
    }
}

/// What [`Projection::describe`](crate::Projection::describe) returns.
///
/// ```
/// use wallex_projection_sdk::{ColumnType::*, ProjectionInfo, Table, WalletCreated};
///
/// let info = ProjectionInfo::new("wallet-owners", 1)
///     .subscribe(WalletCreated::TYPE)
///     .table(Table::new("owners").column("owner", Text).primary_key(["owner"]));
/// assert_eq!(info.subscribes_to, ["WalletCreated"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProjectionInfo {
    /// `[a-z][a-z0-9_-]{0,40}`: the projection's identity (checkpoint, lease, schema, URLs).
    pub name: String,
    /// The tables' version: bump it when a table changes, and the host rebuilds the new
    /// version from the start of the log in a new schema.
    pub schema_version: u32,
    /// Event types passed to `handle` (`"*"` for all); others are skipped.
    pub subscribes_to: Vec<String>,
    /// The tables, in order.
    pub tables: Vec<Table>,
}

impl ProjectionInfo {
    /// A projection with no subscriptions and no tables yet.
    pub fn new(name: impl Into<String>, schema_version: u32) -> Self {
        Self {
            name: name.into(),
            schema_version,
            subscribes_to: Vec::new(),
            tables: Vec::new(),
        }
    }

    /// Subscribes to one event type (e.g. [`WalletCreated::TYPE`](crate::WalletCreated::TYPE)).
    pub fn subscribe(mut self, event_type: impl Into<String>) -> Self {
        self.subscribes_to.push(event_type.into());
        self
    }

    /// Subscribes to every event type (`"*"`), including ones added after the projection.
    pub fn subscribe_all(self) -> Self {
        self.subscribe(ALL_EVENT_TYPES)
    }

    /// Adds a table.
    pub fn table(mut self, table: Table) -> Self {
        self.tables.push(table);
        self
    }
}

/// The subscription that means "every event type".
pub const ALL_EVENT_TYPES: &str = "*";

/// Says that the rows of `table` whose `column` holds `v` belong to the stream
/// `stream_prefix + v` (0.2.0 world: see [`Projection::stream_owners`](crate::Projection::stream_owners)).
///
/// `column` must be a `text` column that leads the table's primary key or one of its indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamOwner {
    /// The table.
    pub table: String,
    /// The owner column.
    pub column: String,
    /// What the stream id is, before the column's value (e.g. `wallet-`).
    pub stream_prefix: String,
}

impl StreamOwner {
    /// `table`'s rows whose `column` holds `v` belong to the stream `stream_prefix + v`.
    pub fn new(
        table: impl Into<String>,
        column: impl Into<String>,
        stream_prefix: impl Into<String>,
    ) -> Self {
        Self {
            table: table.into(),
            column: column.into(),
            stream_prefix: stream_prefix.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ColumnType::*;
    use super::*;

    #[test]
    fn a_table_keeps_its_declaration_order() {
        let table = Table::new("t")
            .column("a", Text)
            .nullable_column("b", S64)
            .with_column(Column::new("c", Json).nullable())
            .primary_key(["a"])
            .index("t_by_b", ["b"])
            .unique_index("t_by_c", vec![String::from("c"), String::from("a")]);
        assert_eq!(table.name, "t");
        let columns: Vec<_> = table
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.column_type, c.nullable))
            .collect();
        assert_eq!(
            columns,
            [("a", Text, false), ("b", S64, true), ("c", Json, true)]
        );
        assert_eq!(table.primary_key, ["a"]);
        assert_eq!(
            table.indexes,
            [
                Index {
                    name: "t_by_b".into(),
                    columns: vec!["b".into()],
                    unique: false
                },
                Index {
                    name: "t_by_c".into(),
                    columns: vec!["c".into(), "a".into()],
                    unique: true
                },
            ]
        );
    }

    #[test]
    fn a_projection_collects_subscriptions_and_tables() {
        let info = ProjectionInfo::new("p", 3)
            .subscribe("A")
            .subscribe_all()
            .table(Table::new("x"))
            .table(Table::new("y"));
        assert_eq!(info.name, "p");
        assert_eq!(info.schema_version, 3);
        assert_eq!(info.subscribes_to, ["A", "*"]);
        let names: Vec<_> = info.tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["x", "y"]);
        let owner = StreamOwner::new("x", "id", "x-");
        assert_eq!(
            (
                owner.table.as_str(),
                owner.column.as_str(),
                owner.stream_prefix.as_str()
            ),
            ("x", "id", "x-")
        );
    }
}

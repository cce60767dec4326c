//! What a projection declares, validated, and the DDL that creates it.
//!
//! Why it exists: a component only ever names tables and columns; this module decides whether the
//! names are acceptable (`[a-z][a-z0-9_]{0,62}`, always quoted in SQL), places the tables in a
//! schema that belongs to the projection alone (`proj_<name>_v<schema version>`), and creates
//! them. Nothing outside that schema is ever written on a component's behalf.

use std::collections::{HashMap, HashSet};

use sqlx::{Connection, PgConnection};

use wallex_sandbox::engine::wit;
use wallex_sandbox::guest_text::quoted;

/// Longest SQL identifier PostgreSQL keeps.
pub const IDENTIFIER_MAX_LEN: usize = 63;
/// Longest projection name (it becomes part of the schema name).
pub const PROJECTION_NAME_MAX_LEN: usize = 41;
/// Most tables one projection may declare.
pub const MAX_TABLES: usize = 32;
// A table has at most one stream owner, and the sandbox reads at most this many.
const _: () = assert!(MAX_TABLES == wallex_sandbox::engine::MAX_STREAM_OWNERS);
/// Most columns one table may declare.
pub const MAX_COLUMNS: usize = 128;
/// Most indexes one table may declare.
pub const MAX_INDEXES_PER_TABLE: usize = 16;
/// Most event types one projection may subscribe to.
pub const MAX_SUBSCRIPTIONS: usize = 256;
/// Longest subscribed event type.
pub const EVENT_TYPE_MAX_LEN: usize = 128;
/// Subscribes to every event type.
pub const ALL_EVENT_TYPES: &str = "*";
/// Serialises DDL of concurrently starting processes (a transaction-scoped advisory lock key).
const DDL_LOCK_KEY: i64 = 0x7761_6c6c_6578_0001;

/// A declaration the host refuses. Names in it are already quoted and clipped
/// ([`wallex_sandbox::guest_text::quoted`]): a component chooses them and they can be of any size.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemaError {
    /// The projection's name is not `[a-z][a-z0-9_-]{0,40}`.
    #[error("invalid projection name {0}: expected [a-z][a-z0-9_-]{{0,40}}")]
    ProjectionName(String),
    /// A table, column or index name, or a schema name made from the projection's, is not an
    /// identifier.
    #[error("invalid identifier {0}: expected [a-z][a-z0-9_]{{0,62}}")]
    Identifier(String),
    /// Two tables, or two indexes of the projection, have the same name.
    #[error("{what} declared twice: {name}")]
    Duplicate {
        /// What kind of name: `table` or `index`.
        what: &'static str,
        /// The name, quoted.
        name: String,
    },
    /// A subscribed event type is empty, too long or not visible ASCII.
    #[error("invalid subscribed event type {0}: expected 1 to {EVENT_TYPE_MAX_LEN} visible ASCII characters")]
    EventType(String),
    /// Two relations of the projection's schema (tables, indexes, primary-key constraints) would
    /// have the same name.
    #[error("relation name {name} is used twice in the projection's schema: by {first} and by {second} (tables, indexes and primary keys share one namespace)")]
    Collision {
        /// The name, quoted.
        name: String,
        /// The relation that claimed it first.
        first: String,
        /// The relation that claimed it again.
        second: String,
    },
    /// A table's declaration is inconsistent (a column declared twice, a key or index naming an
    /// unknown column, …).
    #[error("table {table}: {message}")]
    Table {
        /// The table's name, quoted.
        table: String,
        /// What is wrong with it.
        message: String,
    },
    /// A `stream-owners` entry (`wallex:projection@0.2.0`) the host cannot use.
    #[error("stream-owners: {0}")]
    StreamOwner(String),
    /// The declaration exceeds one of the host's limits.
    #[error("too many {what}: {count} > {max}")]
    TooMany {
        /// What is counted: tables, columns, indexes or subscribed event types.
        what: &'static str,
        /// How many were declared.
        count: usize,
        /// The limit.
        max: usize,
    },
}

/// The host's column types (see `column-type` in the WIT contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnType {
    /// `bool`: `BOOLEAN`.
    Bool,
    /// `s64`: `BIGINT`.
    S64,
    /// `f64`: `DOUBLE PRECISION`.
    F64,
    /// `text`: `TEXT`.
    Text,
    /// `decimal`: `NUMERIC`.
    Decimal,
    /// `json`: `JSONB`.
    Json,
    /// `timestamp`: `TIMESTAMPTZ`.
    Timestamp,
    /// `uuid`: `UUID`.
    Uuid,
    /// `bytes`: `BYTEA`.
    Bytes,
}

impl ColumnType {
    fn from_wit(t: wit::ColumnType) -> Self {
        match t {
            wit::ColumnType::Bool => Self::Bool,
            wit::ColumnType::S64 => Self::S64,
            wit::ColumnType::F64 => Self::F64,
            wit::ColumnType::Text => Self::Text,
            wit::ColumnType::Decimal => Self::Decimal,
            wit::ColumnType::Json => Self::Json,
            wit::ColumnType::Timestamp => Self::Timestamp,
            wit::ColumnType::Uuid => Self::Uuid,
            wit::ColumnType::Bytes => Self::Bytes,
        }
    }

    /// The PostgreSQL column type.
    pub fn sql(self) -> &'static str {
        match self {
            Self::Bool => "BOOLEAN",
            Self::S64 => "BIGINT",
            Self::F64 => "DOUBLE PRECISION",
            Self::Text => "TEXT",
            Self::Decimal => "NUMERIC",
            Self::Json => "JSONB",
            Self::Timestamp => "TIMESTAMPTZ",
            Self::Uuid => "UUID",
            Self::Bytes => "BYTEA",
        }
    }

    /// Whether `add` applies to it.
    pub fn is_numeric(self) -> bool {
        matches!(self, Self::S64 | Self::F64 | Self::Decimal)
    }

    /// The WIT name, for error messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bool => "bool",
            Self::S64 => "s64",
            Self::F64 => "f64",
            Self::Text => "text",
            Self::Decimal => "decimal",
            Self::Json => "json",
            Self::Timestamp => "timestamp",
            Self::Uuid => "uuid",
            Self::Bytes => "bytes",
        }
    }
}

/// A declared column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnSchema {
    /// The column's name, an identifier.
    pub name: String,
    /// Its type.
    pub ty: ColumnType,
    /// Whether it may hold NULL (primary-key columns never may, whatever this says).
    pub nullable: bool,
}

/// A declared secondary index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSchema {
    /// The index's name, an identifier unique among the projection's relations.
    pub name: String,
    /// The indexed columns, as indexes into the table's `columns`, in order.
    pub columns: Vec<usize>,
    /// Whether it is a `UNIQUE` index.
    pub unique: bool,
}

/// A declared table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    /// The table's name, an identifier.
    pub name: String,
    /// Its columns, in declaration order.
    pub columns: Vec<ColumnSchema>,
    /// Indexes into `columns`.
    pub primary_key: Vec<usize>,
    /// Its secondary indexes.
    pub indexes: Vec<IndexSchema>,
    by_name: HashMap<String, usize>,
}

impl TableSchema {
    /// The column's index, if declared.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Whether the column (an index into `columns`) is part of the primary key.
    pub fn is_key(&self, column: usize) -> bool {
        self.primary_key.contains(&column)
    }
}

/// Which event types a projection receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscriptions {
    /// Every event type (the declaration subscribes to [`ALL_EVENT_TYPES`]).
    All,
    /// Only these event types.
    Only(HashSet<String>),
}

impl Subscriptions {
    /// Whether events of `event_type` are passed to `handle`.
    pub fn includes(&self, event_type: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(types) => types.contains(event_type),
        }
    }
}

/// A validated declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionSchema {
    /// The projection's name: its identity (checkpoint, lease, schema names).
    pub name: String,
    /// The version of its tables; a new one is built from scratch in a new namespace.
    pub schema_version: u32,
    /// The PostgreSQL schema holding the tables: `proj_<name>_v<version>`.
    pub namespace: String,
    /// Which event types are passed to `handle`.
    pub subscriptions: Subscriptions,
    /// The subscribed event types as declared, in order (what is reported).
    pub subscribes_to: Vec<String>,
    /// The declared tables, in declaration order.
    pub tables: Vec<TableSchema>,
    /// Which column of each table holds the stream owning its rows, when the component says
    /// (`wallex:projection@0.2.0`); `None` for a 0.1.0 component.
    pub stream_owners: Option<Vec<StreamOwnerSchema>>,
    by_name: HashMap<String, usize>,
}

/// Most bytes of a `stream-owners` prefix.
pub const STREAM_PREFIX_MAX_LEN: usize = 128;

/// A validated `stream-owners` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOwnerSchema {
    /// Index into [`ProjectionSchema::tables`].
    pub table: usize,
    /// Index into that table's columns: a `text` column leading its primary key or an index, so
    /// that a stream's rows are found without a scan.
    pub column: usize,
    /// What precedes the column's value in the stream id.
    pub stream_prefix: String,
}

impl ProjectionSchema {
    /// The table named `name`, if declared.
    pub fn table(&self, name: &str) -> Option<&TableSchema> {
        self.by_name.get(name).map(|&i| &self.tables[i])
    }

    /// `"namespace"."table"`.
    pub fn qualified(&self, table: &TableSchema) -> String {
        format!("{}.{}", quote(&self.namespace), quote(&table.name))
    }

    /// The same declaration with its tables in another PostgreSQL schema (a rebuild's fresh copy,
    /// or the namespace the registry records as live).
    pub fn with_namespace(mut self, namespace: String) -> Self {
        self.namespace = namespace;
        self
    }

    /// Whether `other` declares the same tables (names, columns, types, keys, indexes): the
    /// condition for swapping versions in place without a rebuild.
    pub fn same_tables(&self, other: &ProjectionSchema) -> bool {
        self.tables == other.tables
    }

    /// The stable schema readers use: one view per table onto the live namespace.
    pub fn stable_namespace(&self) -> String {
        stable_namespace(&self.name)
    }

    /// `"projection_<name>"."table"`: what readers query.
    pub fn stable_qualified(&self, table: &TableSchema) -> String {
        format!("{}.{}", quote(&self.stable_namespace()), quote(&table.name))
    }

    /// Statements that (re)point the stable schema's views at this declaration's namespace.
    /// Run in one transaction, readers see either the old or the new set of tables, never a mix.
    pub fn view_ddl(&self) -> Vec<String> {
        let stable = quote(&self.stable_namespace());
        let mut statements = vec![
            format!("DROP SCHEMA IF EXISTS {stable} CASCADE"),
            format!("CREATE SCHEMA {stable}"),
        ];
        for table in &self.tables {
            statements.push(format!(
                "CREATE VIEW {} AS SELECT * FROM {}",
                self.stable_qualified(table),
                self.qualified(table)
            ));
        }
        statements
    }

    /// Validates what `describe()` returned.
    pub fn from_info(info: &wit::ProjectionInfo) -> Result<Self, SchemaError> {
        if !is_projection_name(&info.name) {
            return Err(SchemaError::ProjectionName(quoted(&info.name)));
        }
        let namespace = namespace_base(&info.name, info.schema_version);
        check_identifier(&namespace)?;
        check_identifier(&build_namespace(&namespace, MAX_BUILD_NUMBER))?;
        check_identifier(&stable_namespace(&info.name))?;
        too_many("tables", info.tables.len(), MAX_TABLES)?;
        too_many(
            "subscribed event types",
            info.subscribes_to.len(),
            MAX_SUBSCRIPTIONS,
        )?;
        if let Some(bad) = info.subscribes_to.iter().find(|t| !is_event_type(t)) {
            return Err(SchemaError::EventType(quoted(bad)));
        }
        let subscriptions = if info.subscribes_to.iter().any(|t| t == ALL_EVENT_TYPES) {
            Subscriptions::All
        } else {
            Subscriptions::Only(info.subscribes_to.iter().cloned().collect())
        };
        let mut tables = Vec::with_capacity(info.tables.len());
        let mut by_name = HashMap::new();
        let mut index_names = HashSet::new();
        for table in &info.tables {
            let table = table_schema(table, &mut index_names)?;
            if by_name.insert(table.name.clone(), tables.len()).is_some() {
                return Err(SchemaError::Duplicate {
                    what: "table",
                    name: quoted(&table.name),
                });
            }
            tables.push(table);
        }
        check_relation_names(&tables)?;
        Ok(Self {
            name: info.name.clone(),
            schema_version: info.schema_version,
            namespace,
            subscriptions,
            subscribes_to: info.subscribes_to.clone(),
            tables,
            stream_owners: None,
            by_name,
        })
    }

    /// Adds what the component's `stream-owners` returned (`None` for a 0.1.0 component),
    /// validated against the tables.
    pub fn with_stream_owners(
        mut self,
        owners: Option<&[wallex_sandbox::engine::StreamOwner]>,
    ) -> Result<Self, SchemaError> {
        let Some(owners) = owners else {
            self.stream_owners = None;
            return Ok(self);
        };
        let invalid = |message: String| Err(SchemaError::StreamOwner(message));
        let mut validated: Vec<StreamOwnerSchema> = Vec::with_capacity(owners.len());
        for owner in owners {
            let Some(&table) = self.by_name.get(&owner.table) else {
                return invalid(format!("no table {}", quoted(&owner.table)));
            };
            if validated.iter().any(|o| o.table == table) {
                return invalid(format!("table {} named twice", quoted(&owner.table)));
            }
            let schema = &self.tables[table];
            let Some(column) = schema.column(&owner.column) else {
                return invalid(format!(
                    "table {} has no column {}",
                    quoted(&owner.table),
                    quoted(&owner.column)
                ));
            };
            if schema.columns[column].ty != ColumnType::Text {
                return invalid(format!(
                    "{}.{} must be a text column",
                    quoted(&owner.table),
                    quoted(&owner.column)
                ));
            }
            let leads = schema.primary_key.first() == Some(&column)
                || schema
                    .indexes
                    .iter()
                    .any(|i| i.columns.first() == Some(&column));
            if !leads {
                return invalid(format!(
                    "{}.{} must be the first column of the primary key or of an index",
                    quoted(&owner.table),
                    quoted(&owner.column)
                ));
            }
            let prefix_ok = owner.stream_prefix.len() <= STREAM_PREFIX_MAX_LEN
                && owner.stream_prefix.bytes().all(|b| b.is_ascii_graphic());
            if !prefix_ok {
                return invalid(format!(
                    "stream prefix {} of table {}: expected at most {STREAM_PREFIX_MAX_LEN} visible ASCII characters",
                    quoted(&owner.stream_prefix),
                    quoted(&owner.table)
                ));
            }
            validated.push(StreamOwnerSchema {
                table,
                column,
                stream_prefix: owner.stream_prefix.clone(),
            });
        }
        self.stream_owners = Some(validated);
        Ok(self)
    }

    /// `CREATE SCHEMA` / `CREATE TABLE` / `CREATE INDEX` statements, all idempotent.
    pub fn ddl(&self) -> Vec<String> {
        let mut statements = vec![format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            quote(&self.namespace)
        )];
        for table in &self.tables {
            let mut columns: Vec<String> = table
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let not_null = if !c.nullable || table.is_key(i) {
                        " NOT NULL"
                    } else {
                        ""
                    };
                    format!("{} {}{not_null}", quote(&c.name), c.ty.sql())
                })
                .collect();
            columns.push(format!(
                "CONSTRAINT {} PRIMARY KEY ({})",
                quote(&primary_key_name(&table.name)),
                column_list(table, &table.primary_key)
            ));
            statements.push(format!(
                "CREATE TABLE IF NOT EXISTS {} ({})",
                self.qualified(table),
                columns.join(", ")
            ));
            for index in &table.indexes {
                statements.push(format!(
                    "CREATE {}INDEX IF NOT EXISTS {} ON {} ({})",
                    if index.unique { "UNIQUE " } else { "" },
                    quote(&index.name),
                    self.qualified(table),
                    column_list(table, &index.columns)
                ));
            }
        }
        statements
    }

    /// Creates the namespace and tables if missing, serialised against other processes.
    pub async fn create(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(DDL_LOCK_KEY)
            .execute(&mut *tx)
            .await?;
        for statement in self.ddl() {
            sqlx::raw_sql(&statement).execute(&mut *tx).await?;
        }
        tx.commit().await
    }
}

fn table_schema(
    table: &wit::Table,
    index_names: &mut HashSet<String>,
) -> Result<TableSchema, SchemaError> {
    check_identifier(&table.name)?;
    let fail = |message: String| SchemaError::Table {
        table: quoted(&table.name),
        message,
    };
    too_many("columns", table.columns.len(), MAX_COLUMNS)?;
    too_many("indexes", table.indexes.len(), MAX_INDEXES_PER_TABLE)?;
    let mut columns = Vec::with_capacity(table.columns.len());
    let mut by_name = HashMap::new();
    for column in &table.columns {
        check_identifier(&column.name)?;
        if by_name.insert(column.name.clone(), columns.len()).is_some() {
            return Err(fail(format!(
                "column {} declared twice",
                quoted(&column.name)
            )));
        }
        columns.push(ColumnSchema {
            name: column.name.clone(),
            ty: ColumnType::from_wit(column.type_),
            nullable: column.nullable,
        });
    }
    let resolve = |names: &[String], what: &str| -> Result<Vec<usize>, SchemaError> {
        if names.is_empty() {
            return Err(fail(format!("{what} has no columns")));
        }
        let mut seen = HashSet::new();
        names
            .iter()
            .map(|name| {
                let index = by_name
                    .get(name)
                    .copied()
                    .ok_or_else(|| fail(format!("{what} names unknown column {}", quoted(name))))?;
                if !seen.insert(index) {
                    return Err(fail(format!("{what} names column {} twice", quoted(name))));
                }
                Ok(index)
            })
            .collect()
    };
    let primary_key = resolve(&table.primary_key, "primary key")?;
    let mut indexes = Vec::with_capacity(table.indexes.len());
    for index in &table.indexes {
        check_identifier(&index.name)?;
        if !index_names.insert(index.name.clone()) {
            return Err(SchemaError::Duplicate {
                what: "index",
                name: quoted(&index.name),
            });
        }
        indexes.push(IndexSchema {
            name: index.name.clone(),
            columns: resolve(&index.columns, &format!("index {}", quoted(&index.name)))?,
            unique: index.unique,
        });
    }
    Ok(TableSchema {
        name: table.name.clone(),
        columns,
        primary_key,
        indexes,
        by_name,
    })
}

fn too_many(what: &'static str, count: usize, max: usize) -> Result<(), SchemaError> {
    if count > max {
        return Err(SchemaError::TooMany { what, count, max });
    }
    Ok(())
}

fn column_list(table: &TableSchema, columns: &[usize]) -> String {
    columns
        .iter()
        .map(|&i| quote(&table.columns[i].name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first namespace of a projection's version: `proj_<name>_v<version>` (`-` becomes `_`).
/// Rebuilds use `<base>_b<n>`. Both end in `_v<digits>` or `_b<digits>`, and the stable schema
/// starts with `projection_`, so no two of them can be equal.
pub fn namespace_base(name: &str, schema_version: u32) -> String {
    format!("proj_{}_v{schema_version}", name.replace('-', "_"))
}

/// Highest rebuild number of a projection version; its namespace must still be an identifier.
pub const MAX_BUILD_NUMBER: i64 = 999_999;

/// The namespace of rebuild `build` of a version whose first namespace is `base`.
pub fn build_namespace(base: &str, build: i64) -> String {
    format!("{base}_b{build}")
}

/// The stable schema of a projection: `projection_<name>` (`-` becomes `_`).
pub fn stable_namespace(name: &str) -> String {
    format!("projection_{}", name.replace('-', "_"))
}

/// `[a-z][a-z0-9_]{0,62}`.
pub fn is_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && name.len() <= IDENTIFIER_MAX_LEN
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

/// `[a-z][a-z0-9_-]{0,40}`.
pub fn is_projection_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && name.len() <= PROJECTION_NAME_MAX_LEN
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

fn check_identifier(name: &str) -> Result<(), SchemaError> {
    if is_identifier(name) {
        Ok(())
    } else {
        Err(SchemaError::Identifier(quoted(name)))
    }
}

/// A subscribed event type: 1 to [`EVENT_TYPE_MAX_LEN`] visible ASCII characters.
pub fn is_event_type(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= EVENT_TYPE_MAX_LEN
        && name.bytes().all(|b| b.is_ascii_graphic())
}

/// The name of a table's primary-key constraint (and its index), as PostgreSQL would choose it:
/// `<table>_pkey`, the table's part cut so that the whole fits an identifier. The DDL states it,
/// so PostgreSQL never picks another one silently.
pub fn primary_key_name(table: &str) -> String {
    const SUFFIX: &str = "_pkey";
    let keep = table.len().min(IDENTIFIER_MAX_LEN - SUFFIX.len());
    format!("{}{SUFFIX}", &table[..keep])
}

/// Tables, indexes and primary-key constraints share PostgreSQL's relation namespace of the
/// projection's schema, and `IF NOT EXISTS` would skip a clash silently: every name must be
/// unique among all of them.
fn check_relation_names(tables: &[TableSchema]) -> Result<(), SchemaError> {
    let mut owners: HashMap<String, String> = HashMap::new();
    let mut claim = |name: String, owner: String| -> Result<(), SchemaError> {
        match owners.get(&name) {
            Some(first) => Err(SchemaError::Collision {
                name: quoted(&name),
                first: first.clone(),
                second: owner,
            }),
            None => {
                owners.insert(name, owner);
                Ok(())
            }
        }
    };
    for table in tables {
        claim(table.name.clone(), format!("table {}", quoted(&table.name)))?;
    }
    for table in tables {
        claim(
            primary_key_name(&table.name),
            format!("the primary key of table {}", quoted(&table.name)),
        )?;
        for index in &table.indexes {
            claim(
                index.name.clone(),
                format!(
                    "index {} of table {}",
                    quoted(&index.name),
                    quoted(&table.name)
                ),
            )?;
        }
    }
    Ok(())
}

/// Quotes a validated identifier. Validation already excludes `"`, quoting keeps reserved words
/// (`user`, `order`) usable.
pub fn quote(identifier: &str) -> String {
    format!("\"{identifier}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_of_versions_rebuilds_and_readers_are_distinct() {
        assert_eq!(namespace_base("read-model", 1), "proj_read_model_v1");
        assert_eq!(
            build_namespace("proj_read_model_v1", 3),
            "proj_read_model_v1_b3"
        );
        assert_eq!(stable_namespace("read-model"), "projection_read_model");
        // A name that would read like another projection's rebuild still maps elsewhere.
        assert_ne!(
            namespace_base("a-v1-b2", 1),
            build_namespace(&namespace_base("a", 1), 2)
        );
        assert_ne!(stable_namespace("x"), namespace_base("ection-x", 1));
    }

    fn info(table: wit::Table) -> wit::ProjectionInfo {
        wit::ProjectionInfo {
            name: "my-proj".into(),
            schema_version: 2,
            subscribes_to: vec!["A".into()],
            tables: vec![table],
        }
    }

    fn table(name: &str, pk: &[&str]) -> wit::Table {
        wit::Table {
            name: name.into(),
            columns: vec![
                wit::Column {
                    name: "id".into(),
                    type_: wit::ColumnType::Text,
                    nullable: false,
                },
                wit::Column {
                    name: "n".into(),
                    type_: wit::ColumnType::S64,
                    nullable: true,
                },
            ],
            primary_key: pk.iter().map(|s| s.to_string()).collect(),
            indexes: vec![],
        }
    }

    #[test]
    fn namespace_is_derived_from_name_and_version() {
        let schema = ProjectionSchema::from_info(&info(table("t", &["id"]))).unwrap();
        assert_eq!(schema.namespace, "proj_my_proj_v2");
        assert_eq!(
            schema.ddl()[1],
            "CREATE TABLE IF NOT EXISTS \"proj_my_proj_v2\".\"t\" (\"id\" TEXT NOT NULL, \"n\" BIGINT, CONSTRAINT \"t_pkey\" PRIMARY KEY (\"id\"))"
        );
    }

    #[test]
    fn rejects_bad_identifiers_and_keys() {
        for bad in ["T", "1t", "t;drop", "t\"x", ""] {
            assert_eq!(
                ProjectionSchema::from_info(&info(table(bad, &["id"]))),
                Err(SchemaError::Identifier(quoted(bad)))
            );
        }
        assert!(matches!(
            ProjectionSchema::from_info(&info(table("t", &[]))),
            Err(SchemaError::Table { .. })
        ));
        assert!(matches!(
            ProjectionSchema::from_info(&info(table("t", &["nope"]))),
            Err(SchemaError::Table { .. })
        ));
        let mut bad_name = info(table("t", &["id"]));
        bad_name.name = "Bad Name".into();
        assert!(matches!(
            ProjectionSchema::from_info(&bad_name),
            Err(SchemaError::ProjectionName(_))
        ));
    }

    #[test]
    fn relation_names_cannot_collide() {
        let mut both = info(table("t", &["id"]));
        both.tables.push(table("t_pkey", &["id"]));
        let error = ProjectionSchema::from_info(&both).unwrap_err();
        assert_eq!(
            error.to_string(),
            "relation name \"t_pkey\" is used twice in the projection's schema: by table \"t_pkey\" and by the primary key of table \"t\" (tables, indexes and primary keys share one namespace)"
        );
        let mut index_like_table = info(table("a", &["id"]));
        index_like_table.tables.push(table("b", &["id"]));
        index_like_table.tables[0].indexes.push(wit::Index {
            name: "b".into(),
            columns: vec!["n".into()],
            unique: false,
        });
        assert!(matches!(
            ProjectionSchema::from_info(&index_like_table),
            Err(SchemaError::Collision { .. })
        ));
        // Long table names: PostgreSQL's cut of `<table>_pkey` is what is checked.
        let long = "x".repeat(63);
        let mut cut = info(table(&long, &["id"]));
        cut.tables
            .push(table(&format!("{}_pkey", &long[..58]), &["id"]));
        assert!(matches!(
            ProjectionSchema::from_info(&cut),
            Err(SchemaError::Collision { .. })
        ));
        assert_eq!(primary_key_name(&long).len(), 63);
    }

    #[test]
    fn errors_quote_names_bounded() {
        let huge = "N".repeat(16 << 20);
        let mut bad = info(table("t", &["id"]));
        bad.name = huge.clone();
        let text = ProjectionSchema::from_info(&bad).unwrap_err().to_string();
        assert!(text.len() < 512, "{}", text.len());
        let mut bad = info(table("t", &["id"]));
        bad.subscribes_to = vec![huge.clone()];
        let text = ProjectionSchema::from_info(&bad).unwrap_err().to_string();
        assert!(text.starts_with("invalid subscribed event type"), "{text}");
        assert!(text.len() < 512, "{}", text.len());
        let text = ProjectionSchema::from_info(&info(table(&huge, &["id"])))
            .unwrap_err()
            .to_string();
        assert!(text.len() < 512, "{}", text.len());
    }
}

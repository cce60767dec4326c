//! Property test: whatever a component returns from `describe()` and `handle()`, the host's
//! validation, planning and a real PostgreSQL apply end in one of three ways — refused by
//! validation with a bounded message, applied, or refused by PostgreSQL as *data*
//! ([`mutation::data_rejection`], which the worker attributes to events). Never a panic, never
//! another database error (which would be a 5xx or a failed batch nobody can attribute), never
//! DDL that PostgreSQL refuses for a declaration the host accepted.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use sqlx::{Connection, PgConnection};
use wallex_runtime::guest_text::{MARKER_MAX_BYTES, MAX_ERROR_BYTES};
use wallex_runtime::mutation;
use wallex_runtime::schema::ProjectionSchema;
use wallex_sandbox::engine::wit;
use wallex_test_support::db::TestDb;

/// Cases run (each creates a schema in PostgreSQL and applies a batch).
const CASES: u32 = 400;

/// Names a component might choose: valid, colliding, reserved, at the length limit, invalid.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "t", "t_pkey", "a", "b", "id", "user", "select", "order", "n", "v", "doc",
        ])
        .prop_map(str::to_owned),
        1 => Just("x".repeat(63)),
        1 => Just(format!("{}_pkey", "x".repeat(58))),
        1 => "[a-z][a-z0-9_]{0,8}",
        1 => prop::sample::select(vec!["T", "1t", "t;drop", "a\"b", "", "é", "x\u{0}"])
            .prop_map(str::to_owned),
        1 => Just("n".repeat(1 << 16)),
    ]
}

fn column_type() -> impl Strategy<Value = wit::ColumnType> {
    prop::sample::select(vec![
        wit::ColumnType::Bool,
        wit::ColumnType::S64,
        wit::ColumnType::F64,
        wit::ColumnType::Text,
        wit::ColumnType::Decimal,
        wit::ColumnType::Json,
        wit::ColumnType::Timestamp,
        wit::ColumnType::Uuid,
        wit::ColumnType::Bytes,
    ])
}

/// Mostly the ordinary name given (distinct by position), sometimes a drawn one.
fn name_or(ordinary: String) -> impl Strategy<Value = String> {
    prop_oneof![12 => Just(ordinary), 1 => name()]
}

fn table(position: usize) -> impl Strategy<Value = wit::Table> {
    (
        name_or(format!("t{position}")),
        prop::collection::vec((column_type(), any::<bool>()), 1..5),
        prop::collection::vec(prop::option::weighted(0.05, name()), 5),
        prop::collection::vec(0..5_usize, 1..3),
        prop::collection::vec(
            (
                name_or(format!("i{position}")),
                prop::collection::vec(0..5_usize, 1..3),
                any::<bool>(),
            ),
            0..3,
        ),
    )
        .prop_map(move |(name, columns, strays, key, indexes)| {
            let column_name = |i: usize| {
                let i = i % columns.len();
                strays[i].clone().unwrap_or_else(|| format!("c{i}"))
            };
            // Column lists name each column once (mostly: a stray name may repeat one).
            let distinct = |indexes: &[usize]| {
                let mut names: Vec<String> = indexes.iter().map(|&i| column_name(i)).collect();
                names.dedup();
                names
            };
            wit::Table {
                primary_key: distinct(&key),
                indexes: indexes
                    .into_iter()
                    .enumerate()
                    .map(|(n, (name, cols, unique))| wit::Index {
                        name: format!(
                            "{name}{}",
                            if n == 0 { String::new() } else { n.to_string() }
                        ),
                        columns: distinct(&cols),
                        unique,
                    })
                    .collect(),
                columns: columns
                    .iter()
                    .enumerate()
                    .map(|(i, (type_, nullable))| wit::Column {
                        name: column_name(i),
                        type_: *type_,
                        nullable: *nullable,
                    })
                    .collect(),
                name,
            }
        })
}

fn tables() -> impl Strategy<Value = Vec<wit::Table>> {
    (1..4_usize).prop_flat_map(|count| (0..count).map(table).collect::<Vec<_>>())
}

fn info() -> impl Strategy<Value = wit::ProjectionInfo> {
    (
        prop_oneof![
            12 => Just("fuzz".to_owned()),
            1 => name(),
        ],
        tables(),
        prop_oneof![
            12 => Just(vec!["*".to_owned()]),
            1 => prop::collection::vec(name(), 0..3),
        ],
    )
        .prop_map(|(name, tables, subscribes_to)| wit::ProjectionInfo {
            name,
            schema_version: 1,
            subscribes_to,
            tables,
        })
}

/// One candidate value per column type, with the edge cases PostgreSQL draws lines at; which one
/// a cell gets depends on its column's type (or, now and then, a value of another type or null).
#[derive(Debug, Clone)]
struct Values {
    typed: [wit::Value; 9],
    null: bool,
    wrong: Option<usize>,
}

impl Values {
    fn for_type(&self, ty: wit::ColumnType) -> wit::Value {
        let index = match ty {
            wit::ColumnType::Bool => 0,
            wit::ColumnType::S64 => 1,
            wit::ColumnType::F64 => 2,
            wit::ColumnType::Text => 3,
            wit::ColumnType::Decimal => 4,
            wit::ColumnType::Json => 5,
            wit::ColumnType::Timestamp => 6,
            wit::ColumnType::Uuid => 7,
            wit::ColumnType::Bytes => 8,
        };
        if self.null {
            return wit::Value::Null;
        }
        self.typed[self.wrong.unwrap_or(index)].clone()
    }
}

fn values() -> impl Strategy<Value = Values> {
    use wit::Value as V;
    let typed = (
        any::<bool>().prop_map(V::Bool),
        prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(0_i64), any::<i64>()].prop_map(V::S64),
        prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(-0.0_f64),
            Just(f64::MAX),
            any::<f64>()
        ]
        .prop_map(V::F64),
        prop_oneof![
            1 => Just(String::new()),
            1 => Just("a\0b".to_owned()),
            1 => Just("\u{1b}[31m\n".to_owned()),
            30 => "[a-c]{0,2}",
            // Too large for a btree index row once it is a key (TOAST cannot compress it).
            1 => prop::collection::vec(any::<char>(), 3000..3001).prop_map(|c| c.into_iter().collect()),
        ]
        .prop_map(V::Text),
        prop_oneof![
            1 => Just("1e5".to_owned()),
            1 => Just("-0.00".to_owned()),
            1 => Just("9".repeat(200)),
            1 => Just("9".repeat(201)),
            30 => "-?[0-9]{1,3}(\\.[0-9]{1,3})?",
        ]
        .prop_map(V::Decimal),
        prop_oneof![
            1 => Just(r#"{"a":"\u0000"}"#.to_owned()),
            1 => Just("[1e200000]".to_owned()),
            1 => Just("[1e131071]".to_owned()),
            1 => Just("[1e-16384]".to_owned()),
            1 => Just(r#""\ud800""#.to_owned()),
            1 => Just("[".repeat(200) + &"]".repeat(200)),
            1 => Just("not json".to_owned()),
            30 => Just(r#"{"b":1.0,"a":[true,null]}"#.to_owned()),
        ]
        .prop_map(V::Json),
        prop_oneof![
            1 => Just("0000-01-01T00:00:00+23:59".to_owned()),
            1 => Just("9999-12-31T23:59:59.999999999-23:59".to_owned()),
            1 => Just("-5000-01-01T00:00:00Z".to_owned()),
            1 => Just("garbage".to_owned()),
            30 => Just("2026-11-26T12:00:00Z".to_owned()),
        ]
        .prop_map(V::Timestamp),
        prop_oneof![
            30 => Just("00000000-0000-0000-0000-000000000001".to_owned()),
            1 => Just("not-a-uuid".to_owned()),
        ]
        .prop_map(V::Uuid),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(V::Bytes),
    );
    (
        typed,
        prop::bool::weighted(0.02),
        prop::option::weighted(0.01, 0..9_usize),
    )
        .prop_map(|((b, i, f, t, d, j, ts, u, by), null, wrong)| Values {
            typed: [b, i, f, t, d, j, ts, u, by],
            null,
            wrong,
        })
}

/// A mutation drawn against whatever the declaration turns out to be: which table, one set of
/// values per column, and the names that may stray from the declaration.
#[derive(Debug, Clone)]
struct Draw {
    op: u8,
    table: usize,
    stray_table: Option<String>,
    stray_column: Option<String>,
    values: Vec<Values>,
    dropped: Option<usize>,
    accumulate: Vec<usize>,
    guard: Vec<usize>,
}

fn draw() -> impl Strategy<Value = Draw> {
    (
        0..4_u8,
        0..4_usize,
        prop::option::weighted(0.01, name()),
        prop::option::weighted(0.01, name()),
        prop::collection::vec(values(), 5),
        prop::option::weighted(0.02, 0..5_usize),
        prop::collection::vec(0..5_usize, 0..2),
        prop::collection::vec(0..5_usize, 0..2),
    )
        .prop_map(
            |(op, table, stray_table, stray_column, values, dropped, accumulate, guard)| Draw {
                op,
                table,
                stray_table,
                stray_column,
                values,
                dropped,
                accumulate,
                guard,
            },
        )
}

fn mutation_of(info: &wit::ProjectionInfo, draw: &Draw) -> wit::Mutation {
    let table = &info.tables[draw.table % info.tables.len()];
    let table_name = draw
        .stray_table
        .clone()
        .unwrap_or_else(|| table.name.clone());
    let cell = |i: usize| {
        let column = &table.columns[i % table.columns.len()];
        wit::ColumnValue {
            column: column.name.clone(),
            value: draw.values[i % draw.values.len()].for_type(column.type_),
        }
    };
    let position = |name: &String| table.columns.iter().position(|c| &c.name == name);
    let key: Vec<wit::ColumnValue> = table
        .primary_key
        .iter()
        .filter_map(position)
        .map(cell)
        .collect();
    let others: Vec<usize> = (0..table.columns.len())
        .filter(|&i| !table.primary_key.contains(&table.columns[i].name))
        .collect();
    let mut row: Vec<wit::ColumnValue> = (0..table.columns.len())
        .filter(|&i| Some(i) != draw.dropped)
        .map(cell)
        .collect();
    if let Some(stray) = &draw.stray_column {
        row.push(wit::ColumnValue {
            column: stray.clone(),
            value: wit::Value::Null,
        });
    }
    let names = |indexes: &[usize]| {
        indexes
            .iter()
            .map(|&i| table.columns[i % table.columns.len()].name.clone())
            .collect::<Vec<_>>()
    };
    match draw.op {
        0 => wit::Mutation::Insert(wit::InsertOp {
            table: table_name,
            values: row,
        }),
        1 => wit::Mutation::Upsert(wit::UpsertOp {
            table: table_name,
            values: row,
            accumulate: names(&draw.accumulate),
            guard: names(&draw.guard),
        }),
        2 => wit::Mutation::Update(wit::UpdateOp {
            table: table_name,
            key,
            changes: others
                .iter()
                .map(|&i| {
                    if draw.accumulate.contains(&i) {
                        wit::Change::Add(cell(i))
                    } else {
                        wit::Change::Set(cell(i))
                    }
                })
                .collect(),
        }),
        _ => wit::Mutation::Delete(wit::DeleteOp {
            table: table_name,
            key,
        }),
    }
}

fn bounded(text: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        text.len() <= MAX_ERROR_BYTES + MARKER_MAX_BYTES,
        "an error of {} bytes",
        text.len()
    );
    Ok(())
}

#[test]
fn any_component_output_is_refused_applied_or_attributed_never_a_database_failure() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let db = runtime.block_on(TestDb::new());
    let conn = runtime
        .block_on(PgConnection::connect(&db.url))
        .expect("connect");
    let conn = std::cell::RefCell::new(conn);
    let cases = std::cell::Cell::new(0_u32);
    // Cases: declaration refused, mutations refused, applied, refused by PostgreSQL as data.
    let outcomes = std::cell::Cell::new([0_u32; 4]);
    let count = |which: usize| {
        let mut o = outcomes.get();
        o[which] += 1;
        outcomes.set(o);
    };
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(
        &(info(), prop::collection::vec(draw(), 1..6), any::<bool>()),
        |(info, mut draws, repeat)| {
            // The same mutation twice: a second insert of one key, a second `add`.
            if repeat {
                draws.push(draws[0].clone());
            }
            let case = cases.get() + 1;
            cases.set(case);
            let schema = match ProjectionSchema::from_info(&info) {
                Ok(schema) => schema.with_namespace(format!("fuzz_{case}")),
                Err(error) => {
                    count(0);
                    return bounded(&error.to_string());
                }
            };
            let mut conn = conn.borrow_mut();
            runtime.block_on(async {
                // A declaration the host accepts is one PostgreSQL creates.
                schema.create(&mut conn).await.map_err(|e| {
                    TestCaseError::fail(format!("DDL refused: {e}\n{:?}", schema.ddl()))
                })?;
                let mutations: Vec<wit::Mutation> =
                    draws.iter().map(|d| mutation_of(&info, d)).collect();
                let plan = match mutation::plan(&schema, &mutations) {
                    Ok(plan) => plan,
                    Err(error) => {
                        count(1);
                        return bounded(&error.to_string());
                    }
                };
                let mut tx = conn
                    .begin()
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                match mutation::apply_or_reject(&mut tx, &plan).await {
                    Ok(None) => count(2),
                    Ok(Some(reason)) => {
                        count(3);
                        bounded(&reason)?;
                    }
                    Err(error) => {
                        return Err(TestCaseError::fail(format!(
                            "PostgreSQL failed a validated plan: {error}\n{:?}",
                            plan.statements.iter().map(|s| &s.sql).collect::<Vec<_>>()
                        )))
                    }
                }
                tx.rollback()
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                sqlx::query(&format!("DROP SCHEMA \"fuzz_{case}\" CASCADE"))
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                Ok(())
            })
        },
    );
    if let Err(error) = outcome {
        panic!("{error}");
    }
    // The generator reaches every outcome.
    let [declaration, mutations, applied, rejected] = outcomes.get();
    eprintln!(
        "declaration refused {declaration}, mutations refused {mutations}, applied {applied}, \
         refused by PostgreSQL {rejected}"
    );
    assert!(
        declaration > 0 && mutations > 0 && applied > 0 && rejected > 0,
        "declaration refused {declaration}, mutations refused {mutations}, applied {applied}, \
         refused by PostgreSQL {rejected}"
    );
    drop(conn);
    drop(db);
}

//! Tests of validation, planning and the output budget.

#[allow(unused_imports)]
use super::plan::*;
#[allow(unused_imports)]
use super::validate::*;
#[allow(unused_imports)]
use super::*;
#[allow(unused_imports)]
use crate::schema::{ProjectionSchema, TableSchema};
#[allow(unused_imports)]
use sqlx::PgConnection;

mod unit {
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
             f AS (SELECT v.p0 AS p0, sum(v.p1) AS p1, (array_agg(v.p2 ORDER BY v.ord DESC))[1] AS p2 FROM v LEFT JOIN LATERAL \
             (SELECT stored.\"id\", stored.\"version\" FROM \"proj_p_v1\".\"accounts\" AS stored WHERE stored.\"id\" = v.p0 LIMIT 1) AS t ON true \
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
        // Found by host/runtime/tests/component_output_fuzz.rs: a key declared (n, id) against columns
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

//! One mutation against the declaration: known table and columns, values of the declared types
//! that PostgreSQL will store, complete keys and rows; the result is a typed [`Row`].

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{MutationError, Row, Shape, SqlValue, MAX_DECIMAL_LEN};
use crate::schema::{ColumnType, ProjectionSchema, TableSchema};
use wallex_sandbox::engine::wit;
use wallex_sandbox::guest_text::quoted;

pub(super) fn op_name(mutation: &wit::Mutation) -> (&'static str, &str) {
    match mutation {
        wit::Mutation::Insert(op) => ("insert", &op.table),
        wit::Mutation::Upsert(op) => ("upsert", &op.table),
        wit::Mutation::Update(op) => ("update", &op.table),
        wit::Mutation::Delete(op) => ("delete", &op.table),
    }
}

pub(super) fn validate(
    projection: &ProjectionSchema,
    index: usize,
    mutation: &wit::Mutation,
) -> Result<Row, MutationError> {
    let (op, table_name) = op_name(mutation);
    let Some(table_index) = projection.tables.iter().position(|t| t.name == table_name) else {
        let declared: Vec<&str> = projection.tables.iter().map(|t| t.name.as_str()).collect();
        return Err(MutationError::Invalid {
            index,
            op,
            table: quoted(table_name),
            problem: format!("unknown table (declared: {})", declared.join(", ")),
        });
    };
    let checker = Checker {
        table: &projection.tables[table_index],
        table_index,
        index,
        op,
        table_name,
    };
    match mutation {
        wit::Mutation::Insert(op) => checker.insert(op),
        wit::Mutation::Upsert(op) => checker.upsert(op),
        wit::Mutation::Update(op) => checker.update(op),
        wit::Mutation::Delete(op) => checker.delete(op),
    }
}

/// Values by column index, as the checks pass them on.
type Columns = Vec<(usize, SqlValue)>;

/// One mutation of one declared table being checked: what its errors name, and the checks the
/// four operations share.
struct Checker<'a> {
    table: &'a TableSchema,
    /// The table's position in the declaration (what a [`Shape`] names).
    table_index: usize,
    /// The mutation's position in the call's output.
    index: usize,
    op: &'static str,
    /// The table's name as the component gave it.
    table_name: &'a str,
}

impl Checker<'_> {
    fn fail(&self, problem: String) -> MutationError {
        MutationError::Invalid {
            index: self.index,
            op: self.op,
            table: quoted(self.table_name),
            problem,
        }
    }

    /// The given columns, each known, given once, of its declared type and not null where it
    /// may not be; sorted by column.
    fn values(&self, values: &[wit::ColumnValue]) -> Result<Vec<(usize, SqlValue)>, MutationError> {
        let table = self.table;
        let mut seen = HashSet::new();
        let mut out: Vec<(usize, SqlValue)> = values
            .iter()
            .map(|cv| {
                let c = table
                    .column(&cv.column)
                    .ok_or_else(|| self.fail(format!("unknown column {}", quoted(&cv.column))))?;
                if !seen.insert(c) {
                    return Err(self.fail(format!("column {} given twice", quoted(&cv.column))));
                }
                let column = &table.columns[c];
                let value = validate_value(column.ty, &cv.value).map_err(|problem| {
                    self.fail(format!(
                        "column {} ({}): {problem}",
                        quoted(&column.name),
                        column.ty.name()
                    ))
                })?;
                if is_null(&value) && (!column.nullable || table.is_key(c)) {
                    return Err(self.fail(format!(
                        "column {} is NOT NULL but got null",
                        quoted(&column.name)
                    )));
                }
                Ok((c, value))
            })
            .collect::<Result<_, _>>()?;
        out.sort_by_key(|(c, _)| *c);
        Ok(out)
    }

    /// The row's key as compared within a batch; every primary key column must be given.
    fn key_of(&self, values: &[(usize, SqlValue)]) -> Result<String, MutationError> {
        let table = self.table;
        let mut key = String::new();
        for &k in &table.primary_key {
            let (_, value) = values.iter().find(|(c, _)| *c == k).ok_or_else(|| {
                self.fail(format!(
                    "missing primary key column {}",
                    quoted(&table.columns[k].name)
                ))
            })?;
            key.push_str(&key_part(table.columns[k].ty, value));
            key.push('\u{1f}');
        }
        Ok(key)
    }

    fn require_complete_row(&self, values: &[(usize, SqlValue)]) -> Result<(), MutationError> {
        for (c, column) in self.table.columns.iter().enumerate() {
            if !column.nullable && !values.iter().any(|(given, _)| *given == c) {
                return Err(self.fail(format!(
                    "missing value for NOT NULL column {}",
                    quoted(&column.name)
                )));
            }
        }
        Ok(())
    }

    /// A key given to update or delete names exactly the primary key's columns.
    fn require_exact_key(
        &self,
        key_values: &[(usize, SqlValue)],
        problem: impl FnOnce() -> String,
    ) -> Result<(), MutationError> {
        if key_values.len() == self.table.primary_key.len() {
            Ok(())
        } else {
            Err(self.fail(problem()))
        }
    }

    /// Column names of an `accumulate` or `guard` list: known, not in the key, each once.
    fn resolve_names(&self, names: &[String], what: &str) -> Result<Vec<usize>, MutationError> {
        let table = self.table;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let c = table.column(name).ok_or_else(|| {
                self.fail(format!("{what} names unknown column {}", quoted(name)))
            })?;
            if table.is_key(c) {
                return Err(self.fail(format!("{what} names primary key column {}", quoted(name))));
            }
            if out.contains(&c) {
                return Err(self.fail(format!("{what} names column {} twice", quoted(name))));
            }
            out.push(c);
        }
        Ok(out)
    }

    /// The statements bind key values in the primary key's declared order, which need not be
    /// the columns' order (a key declared as (b, a)). `key_of` has checked they are all there.
    fn in_key_order(&self, values: Vec<(usize, SqlValue)>) -> Vec<SqlValue> {
        self.table
            .primary_key
            .iter()
            .filter_map(|k| values.iter().find(|(c, _)| c == k).map(|(_, v)| v.clone()))
            .collect()
    }

    fn insert(&self, op: &wit::InsertOp) -> Result<Row, MutationError> {
        let values = self.values(&op.values)?;
        let key = self.key_of(&values)?;
        self.require_complete_row(&values)?;
        let (columns, values) = values.into_iter().unzip();
        Ok(Row {
            shape: Shape::Insert {
                table: self.table_index,
                columns,
            },
            values,
            key,
            guard: None,
        })
    }

    fn upsert(&self, op: &wit::UpsertOp) -> Result<Row, MutationError> {
        let values = self.values(&op.values)?;
        let key = self.key_of(&values)?;
        self.require_complete_row(&values)?;
        let mut accumulate = self.resolve_names(&op.accumulate, "accumulate")?;
        let mut guard = self.resolve_names(&op.guard, "guard")?;
        self.check_accumulate_and_guard(&values, &accumulate, &guard)?;
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
                table: self.table_index,
                columns,
                accumulate,
                guard,
            },
            values,
            key,
            guard: guard_values,
        })
    }

    /// Accumulated columns are numeric and given a value; guard columns are NOT NULL, given, and
    /// not accumulated.
    fn check_accumulate_and_guard(
        &self,
        values: &[(usize, SqlValue)],
        accumulate: &[usize],
        guard: &[usize],
    ) -> Result<(), MutationError> {
        for &c in accumulate {
            let column = &self.table.columns[c];
            if !column.ty.is_numeric() {
                return Err(self.fail(format!(
                    "accumulate on non-numeric column {} ({})",
                    quoted(&column.name),
                    column.ty.name()
                )));
            }
            if !values.iter().any(|(given, v)| *given == c && !is_null(v)) {
                return Err(self.fail(format!(
                    "accumulate column {} has no value",
                    quoted(&column.name)
                )));
            }
        }
        for &c in guard {
            let column = &self.table.columns[c];
            if column.nullable || !values.iter().any(|(given, _)| *given == c) {
                return Err(self.fail(format!(
                    "guard column {} must be NOT NULL and given",
                    quoted(&column.name)
                )));
            }
            if accumulate.contains(&c) {
                return Err(self.fail(format!(
                    "guard column {} is also accumulated",
                    quoted(&column.name)
                )));
            }
        }
        Ok(())
    }

    fn update(&self, op: &wit::UpdateOp) -> Result<Row, MutationError> {
        let table = self.table;
        let key_values = self.values(&op.key)?;
        self.require_exact_key(&key_values, || {
            let names: Vec<&str> = table
                .primary_key
                .iter()
                .map(|&c| table.columns[c].name.as_str())
                .collect();
            format!(
                "the key must give exactly the primary key columns ({})",
                names.join(", ")
            )
        })?;
        let key = self.key_of(&key_values)?;
        if op.changes.is_empty() {
            return Err(self.fail("no changes".to_owned()));
        }
        let (mut sets, mut adds) = self.changes(&op.changes)?;
        sets.sort_by_key(|(c, _)| *c);
        adds.sort_by_key(|(c, _)| *c);
        let mut values = self.in_key_order(key_values);
        let (set, set_values): (Vec<usize>, Vec<SqlValue>) = sets.into_iter().unzip();
        let (add, add_values): (Vec<usize>, Vec<SqlValue>) = adds.into_iter().unzip();
        values.extend(set_values);
        values.extend(add_values);
        Ok(Row {
            shape: Shape::Update {
                table: self.table_index,
                set,
                add,
            },
            values,
            key,
            guard: None,
        })
    }

    /// An update's changes, as (sets, adds): each a column outside the key, changed once; an add
    /// is numeric and not null.
    fn changes(&self, changes: &[wit::Change]) -> Result<(Columns, Columns), MutationError> {
        let mut sets = Vec::new();
        let mut adds = Vec::new();
        let mut seen = HashSet::new();
        for change in changes {
            let (cv, is_add) = match change {
                wit::Change::Set(cv) => (cv, false),
                wit::Change::Add(cv) => (cv, true),
            };
            let [(c, value)]: [(usize, SqlValue); 1] = self
                .values(std::slice::from_ref(cv))?
                .try_into()
                .map_err(|_| self.fail("internal: one change, one value".to_owned()))?;
            let column = &self.table.columns[c];
            if self.table.is_key(c) {
                return Err(self.fail(format!(
                    "cannot change primary key column {}",
                    quoted(&column.name)
                )));
            }
            if !seen.insert(c) {
                return Err(self.fail(format!("column {} changed twice", quoted(&column.name))));
            }
            if !is_add {
                sets.push((c, value));
                continue;
            }
            if !column.ty.is_numeric() {
                return Err(self.fail(format!(
                    "add on non-numeric column {} ({})",
                    quoted(&column.name),
                    column.ty.name()
                )));
            }
            if is_null(&value) {
                return Err(self.fail(format!("add of null to column {}", quoted(&column.name))));
            }
            adds.push((c, value));
        }
        Ok((sets, adds))
    }

    fn delete(&self, op: &wit::DeleteOp) -> Result<Row, MutationError> {
        let key_values = self.values(&op.key)?;
        self.require_exact_key(&key_values, || {
            "the key must give exactly the primary key columns".to_owned()
        })?;
        let key = self.key_of(&key_values)?;
        Ok(Row {
            shape: Shape::Delete {
                table: self.table_index,
            },
            values: self.in_key_order(key_values),
            key,
            guard: None,
        })
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
pub(super) fn canonical_decimal(text: &str) -> String {
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

pub(super) fn is_null(value: &SqlValue) -> bool {
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

pub(super) fn value_kind(value: &wit::Value) -> &'static str {
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
pub(super) fn validate_value(ty: ColumnType, value: &wit::Value) -> Result<SqlValue, String> {
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
                    wallex_sandbox::guest_text::clip(
                        &number.to_string(),
                        wallex_sandbox::guest_text::MAX_NAME_BYTES
                    )
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
pub(super) fn timestamp_in_range(instant: &DateTime<Utc>) -> bool {
    use chrono::Datelike;
    let first = chrono::NaiveDate::from_ymd_opt(-4713, 11, 24);
    first.is_some_and(|first| instant.date_naive() >= first) && instant.year() <= 294_276
}

/// `-?digits(.digits)?`, bounded in length.
pub(super) fn is_decimal(text: &str) -> bool {
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

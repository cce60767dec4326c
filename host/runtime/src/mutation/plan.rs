//! Validated rows into statements: consecutive rows of one shape share one `UNNEST` statement;
//! a statement never touches a row twice (see [`plan`] for the one exception).

use std::collections::HashMap;

use super::validate::validate;
use super::{
    ColumnArray, MutationError, Plan, Row, Shape, Statement, MAX_MUTATIONS_PER_BATCH,
    MAX_ROWS_PER_STATEMENT,
};
use crate::schema::{quote, ColumnType, ProjectionSchema, TableSchema};
use wallex_sandbox::engine::wit;

/// The array type a parameter of this column type is bound and cast as.
pub(super) fn param_cast(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Bool => "boolean[]",
        ColumnType::S64 => "bigint[]",
        ColumnType::F64 => "float8[]",
        ColumnType::Text => "text[]",
        ColumnType::Decimal => "text[]::numeric[]",
        ColumnType::Json => "text[]::jsonb[]",
        ColumnType::Timestamp => "timestamptz[]",
        ColumnType::Uuid => "uuid[]",
        ColumnType::Bytes => "bytea[]",
    }
}

impl Shape {
    fn table(&self) -> usize {
        match self {
            Self::Insert { table, .. }
            | Self::Upsert { table, .. }
            | Self::Update { table, .. }
            | Self::Delete { table } => *table,
        }
    }

    /// The declared columns bound as parameters, in order.
    fn params(&self, schema: &TableSchema) -> Vec<usize> {
        match self {
            Self::Insert { columns, .. } | Self::Upsert { columns, .. } => columns.clone(),
            Self::Update { set, add, .. } => {
                let mut params = schema.primary_key.clone();
                params.extend(set);
                params.extend(add);
                params
            }
            Self::Delete { .. } => schema.primary_key.clone(),
        }
    }

    /// Whether a repeated key must start a new statement (one statement cannot touch a row twice).
    fn splits_on_repeated_key(&self) -> bool {
        !matches!(self, Self::Insert { .. })
    }

    fn sql(&self, projection: &ProjectionSchema, table: &TableSchema) -> String {
        let target = projection.qualified(table);
        let params = self.params(table);
        let unnest = params
            .iter()
            .enumerate()
            .map(|(n, &c)| format!("${}::{}", n + 1, param_cast(table.columns[c].ty)))
            .collect::<Vec<_>>()
            .join(", ");
        let name = |c: usize| quote(&table.columns[c].name);
        let names = |cs: &[usize]| cs.iter().map(|&c| name(c)).collect::<Vec<_>>().join(", ");
        let key_match = |offset: usize| {
            table
                .primary_key
                .iter()
                .enumerate()
                .map(|(i, &c)| format!("t.{} = v.p{}", name(c), offset + i))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let aliases = (0..params.len())
            .map(|i| format!("p{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        match self {
            Self::Insert { columns, .. } => {
                format!(
                    "INSERT INTO {target} ({}) SELECT * FROM UNNEST({unnest})",
                    names(columns)
                )
            }
            Self::Upsert {
                columns,
                accumulate,
                guard,
                ..
            } => {
                let updates: Vec<String> = columns
                    .iter()
                    .filter(|&&c| !table.is_key(c))
                    .map(|&c| {
                        if accumulate.contains(&c) {
                            format!("{0} = t.{0} + EXCLUDED.{0}", name(c))
                        } else {
                            format!("{0} = EXCLUDED.{0}", name(c))
                        }
                    })
                    .collect();
                let conflict = if updates.is_empty() {
                    "DO NOTHING".to_owned()
                } else {
                    let mut clause = format!("DO UPDATE SET {}", updates.join(", "));
                    if !guard.is_empty() {
                        let existing = guard
                            .iter()
                            .map(|&c| format!("t.{}", name(c)))
                            .collect::<Vec<_>>()
                            .join(", ");
                        let new = guard
                            .iter()
                            .map(|&c| format!("EXCLUDED.{}", name(c)))
                            .collect::<Vec<_>>()
                            .join(", ");
                        clause.push_str(&format!(" WHERE ({existing}) < ({new})"));
                    }
                    clause
                };
                format!(
                    "INSERT INTO {target} AS t ({}) SELECT * FROM UNNEST({unnest}) ON CONFLICT ({}) {conflict}",
                    names(columns),
                    names(&table.primary_key)
                )
            }
            Self::Update { set, add, .. } => {
                let keys = table.primary_key.len();
                let mut assignments = Vec::new();
                for (i, &c) in set.iter().enumerate() {
                    assignments.push(format!("{} = v.p{}", name(c), keys + i));
                }
                for (i, &c) in add.iter().enumerate() {
                    assignments.push(format!(
                        "{0} = t.{0} + v.p{1}",
                        name(c),
                        keys + set.len() + i
                    ));
                }
                format!(
                    "UPDATE {target} AS t SET {} FROM UNNEST({unnest}) AS v({aliases}) WHERE {}",
                    assignments.join(", "),
                    key_match(0)
                )
            }
            Self::Delete { .. } => format!(
                "DELETE FROM {target} AS t USING UNNEST({unnest}) AS v({aliases}) WHERE {}",
                key_match(0)
            ),
        }
    }
}

/// Validates a batch's mutations and groups them into statements.
///
/// A statement never touches a row twice, with one exception that keeps accumulating projections
/// (ledger balances) fast: guarded accumulating upserts whose guard columns are all `s64` may
/// repeat a key within one statement as long as each repetition's guard is higher than the
/// previous one. Applying them one by one would add every increment above the stored guard and
/// set the other columns from the last of them; the combined statement does exactly that (see
/// `combined_upsert_sql`).
pub fn plan(
    projection: &ProjectionSchema,
    mutations: &[wit::Mutation],
) -> Result<Plan, MutationError> {
    if mutations.len() > MAX_MUTATIONS_PER_BATCH {
        return Err(MutationError::TooMany(mutations.len()));
    }
    let mut plan = Plan::default();
    let mut current: Option<Group> = None;
    for (index, mutation) in mutations.iter().enumerate() {
        let row = validate(projection, index, mutation)?;
        let fits = current.as_ref().is_some_and(|group| group.accepts(&row));
        if !fits {
            if let Some(group) = current.take() {
                plan.statements.push(group.into_statement(projection));
            }
            current = Some(Group {
                shape: row.shape.clone(),
                rows: Vec::new(),
                last_guard: HashMap::new(),
                combined: false,
            });
        }
        if let Some(group) = current.as_mut() {
            group.push(row);
        }
    }
    if let Some(group) = current {
        plan.statements.push(group.into_statement(projection));
    }
    Ok(plan)
}

/// Consecutive rows of one shape on their way to becoming one statement.
struct Group {
    shape: Shape,
    rows: Vec<Row>,
    /// Per key: the guard of its last row (empty when the shape cannot combine).
    last_guard: HashMap<String, Option<Vec<i64>>>,
    /// Whether a key repeats (needs the combining SQL).
    combined: bool,
}

impl Group {
    fn accepts(&self, row: &Row) -> bool {
        if self.shape != row.shape || self.rows.len() >= MAX_ROWS_PER_STATEMENT {
            return false;
        }
        if !self.shape.splits_on_repeated_key() {
            return true;
        }
        match (self.last_guard.get(&row.key), &row.guard) {
            (None, _) => true,
            (Some(Some(previous)), Some(guard)) => guard > previous,
            _ => false,
        }
    }

    fn push(&mut self, row: Row) {
        if self
            .last_guard
            .insert(row.key.clone(), row.guard.clone())
            .is_some()
        {
            self.combined = true;
        }
        self.rows.push(row);
    }

    fn into_statement(self, projection: &ProjectionSchema) -> Statement {
        let mut planned = statement(projection, &self.shape, self.rows);
        if self.combined {
            let table = &projection.tables[self.shape.table()];
            planned.sql = combined_upsert_sql(projection, table, &self.shape);
        }
        planned
    }
}

/// SQL of a guarded accumulating upsert whose rows may repeat a key with increasing guards: per
/// key, the rows above the stored guard (a suffix, since guards increase) are folded — increments
/// summed, other columns and the guard from the last — and then upserted as usual. The stored
/// guard is looked up with `LATERAL … LIMIT 1`, one primary-key probe per row: a plain join lets
/// the planner hash a sequential scan of the whole table for every batch.
fn combined_upsert_sql(
    projection: &ProjectionSchema,
    table: &TableSchema,
    shape: &Shape,
) -> String {
    let Shape::Upsert {
        columns,
        accumulate,
        guard,
        ..
    } = shape
    else {
        return shape.sql(projection, table);
    };
    let target = projection.qualified(table);
    let name = |c: usize| quote(&table.columns[c].name);
    let param = |c: usize| {
        columns
            .iter()
            .position(|&x| x == c)
            .map(|i| format!("v.p{i}"))
            .unwrap_or_default()
    };
    let unnest = columns
        .iter()
        .enumerate()
        .map(|(n, &c)| format!("${}::{}", n + 1, param_cast(table.columns[c].ty)))
        .collect::<Vec<_>>()
        .join(", ");
    let aliases = (0..columns.len())
        .map(|i| format!("p{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let keys: Vec<String> = table.primary_key.iter().map(|&c| param(c)).collect();
    let folded = columns
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            if table.is_key(c) {
                format!("v.p{i} AS p{i}")
            } else if accumulate.contains(&c) {
                format!("sum(v.p{i}) AS p{i}")
            } else {
                format!("(array_agg(v.p{i} ORDER BY v.ord DESC))[1] AS p{i}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let join = table
        .primary_key
        .iter()
        .map(|&c| format!("stored.{} = {}", name(c), param(c)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let mut looked_up_columns: Vec<usize> = table.primary_key.clone();
    looked_up_columns.extend(guard.iter().filter(|&&c| !table.is_key(c)));
    let looked_up = looked_up_columns
        .iter()
        .map(|&c| format!("stored.{}", name(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let stored_guard = guard
        .iter()
        .map(|&c| format!("t.{}", name(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let new_guard = guard
        .iter()
        .map(|&c| param(c))
        .collect::<Vec<_>>()
        .join(", ");
    let first_key = table
        .primary_key
        .first()
        .map(|&c| format!("t.{}", name(c)))
        .unwrap_or_default();
    let upsert = shape.sql(projection, table);
    let conflict = upsert
        .split_once(" ON CONFLICT ")
        .map(|(_, conflict)| conflict)
        .unwrap_or_default();
    format!(
        "WITH v AS (SELECT * FROM UNNEST({unnest}) WITH ORDINALITY AS v({aliases}, ord)), \
         f AS (SELECT {folded} FROM v LEFT JOIN LATERAL \
               (SELECT {looked_up} FROM {target} AS stored WHERE {join} LIMIT 1) AS t ON true \
               WHERE {first_key} IS NULL OR ({stored_guard}) < ({new_guard}) \
               GROUP BY {}) \
         INSERT INTO {target} AS t ({}) SELECT {aliases} FROM f ON CONFLICT {conflict}",
        keys.join(", "),
        columns
            .iter()
            .map(|&c| name(c))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

fn statement(projection: &ProjectionSchema, shape: &Shape, rows: Vec<Row>) -> Statement {
    let table = &projection.tables[shape.table()];
    let params = shape.params(table);
    let mut arrays: Vec<ColumnArray> = params
        .iter()
        .map(|&c| ColumnArray::new(table.columns[c].ty))
        .collect();
    let count = rows.len();
    for row in rows {
        for (array, value) in arrays.iter_mut().zip(row.values) {
            array.push(value);
        }
    }
    Statement {
        sql: shape.sql(projection, table),
        params: arrays,
        rows: count,
    }
}

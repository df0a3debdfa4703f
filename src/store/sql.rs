//! Multi-row statements: bound parameters written once per backend, `VALUES` lists and
//! `IN (…)` lists padded to a few shapes, inserts a statement per [`ROWS`] rows.

use sea_orm::{ConnectionTrait, DatabaseTransaction, Statement, Value};

use super::{Backend, Result};

/// Rows per statement: keeps every statement far below both backends' parameter limits.
pub(super) const ROWS: usize = 512;

/// Bound values of one statement and their placeholders, in the order they appear.
pub(super) struct Params {
    backend: Backend,
    pub(super) values: Vec<Value>,
}

impl Params {
    pub(super) fn new(backend: Backend) -> Params {
        Params {
            backend,
            values: Vec::new(),
        }
    }

    /// Binds a value and returns its placeholder.
    pub(super) fn p(&mut self, v: impl Into<Value>) -> String {
        let mut out = String::new();
        self.push(&mut out, v.into());
        out
    }

    /// Binds a value and writes its placeholder to `out`.
    fn push(&mut self, out: &mut String, v: Value) {
        self.values.push(v);
        match self.backend {
            Backend::Sqlite => out.push('?'),
            Backend::Postgres => {
                use std::fmt::Write as _;
                let _ = write!(out, "${}", self.values.len());
            }
        }
    }

    /// The placeholders of an `IN (…)` list of ids, padded as [`padded`] pads it.
    pub(super) fn list(&mut self, ids: &[i64]) -> String {
        let mut out = String::with_capacity(ids.len().next_power_of_two() * 4);
        for (i, id) in padded(ids.iter().copied()).into_iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            self.push(&mut out, id.into());
        }
        out
    }

    /// A parenthesised row of placeholders, written to `out`.
    fn row(&mut self, out: &mut String, vs: Vec<Value>) {
        out.push('(');
        for (i, v) in vs.into_iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            self.push(out, v);
        }
        out.push(')');
    }

    /// The rows of a `VALUES` list, padded with rows of NULLs to the next power of two: a
    /// statement has one of a few shapes, so the prepared-statement cache keeps hitting (and
    /// stays small) whatever the batch size. A padding row's first column is NULL, so it
    /// matches nothing in an UPDATE and is filtered out of an INSERT … SELECT.
    pub(super) fn values(&mut self, rows: Vec<Vec<Value>>) -> String {
        let pad = rows
            .first()
            .map(|r| r.iter().map(Value::as_null).collect::<Vec<_>>());
        let n = rows.len().next_power_of_two();
        let width = rows.first().map_or(0, Vec::len);
        let mut out = String::with_capacity(n * (width * 6 + 4));
        let mut written = 0;
        for r in rows {
            if written > 0 {
                out.push_str(", ");
            }
            self.row(&mut out, r);
            written += 1;
        }
        while let Some(p) = pad.as_ref().filter(|_| written < n) {
            out.push_str(", ");
            self.row(&mut out, p.clone());
            written += 1;
        }
        out
    }

    pub(super) fn statement(self, sql: String) -> Statement {
        let b = match self.backend {
            Backend::Sqlite => sea_orm::DbBackend::Sqlite,
            Backend::Postgres => sea_orm::DbBackend::Postgres,
        };
        Statement::from_sql_and_values(b, sql, self.values)
    }
}

/// An `IN (…)` list padded to the next power of two by repeating its last item, for the
/// same reason as [`Params::values`]: few statement shapes.
pub(super) fn padded<T: Clone>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut v: Vec<T> = items.into_iter().collect();
    if let Some(last) = v.last().cloned() {
        v.resize(v.len().next_power_of_two(), last);
    }
    v
}

/// `INSERT INTO {head} SELECT * FROM (VALUES …) AS v WHERE v.column1 IS NOT NULL {tail}`:
/// padded rows (see [`Params::values`]) are left out.
pub(super) fn insert_sql(head: &str, values: &str, tail: &str) -> String {
    format!(
        "INSERT INTO {head} SELECT * FROM (VALUES {values}) AS v WHERE v.column1 IS NOT NULL {tail}"
    )
}

/// Inserts `rows`, a statement per [`ROWS`].
pub(super) async fn insert_rows(
    txn: &DatabaseTransaction,
    backend: Backend,
    head: &str,
    tail: &str,
    rows: Vec<Vec<Value>>,
) -> Result<()> {
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let mut q = Params::new(backend);
        let values = q.values(rows.by_ref().take(ROWS).collect());
        txn.execute_raw(q.statement(insert_sql(head, &values, tail)))
            .await?;
    }
    Ok(())
}

/// Chunks of at most [`ROWS`] rows, owned.
pub(super) fn chunks(rows: Vec<Vec<Value>>) -> Vec<Vec<Vec<Value>>> {
    let mut rows = rows.into_iter().peekable();
    let mut out = Vec::new();
    while rows.peek().is_some() {
        out.push(rows.by_ref().take(ROWS).collect());
    }
    out
}

/// `SELECT {columns} {rest}` read as one JSON array of rows (each row an array of its
/// columns, in order) aggregated by the database: one answer instead of one per row, which
/// costs far less to carry out of the database when many small rows come back.
pub(super) async fn select_packed<T: serde::de::DeserializeOwned>(
    db: &impl ConnectionTrait,
    q: Params,
    columns: &str,
    rest: &str,
) -> Result<Vec<T>> {
    let sql = match q.backend {
        Backend::Sqlite => format!("SELECT json_group_array(json_array({columns})) {rest}"),
        Backend::Postgres => {
            format!("SELECT COALESCE(json_agg(json_build_array({columns})), '[]')::text {rest}")
        }
    };
    unpack(db.query_one_raw(q.statement(sql)).await?)
}

/// `UPDATE {table} SET {set} WHERE {filter}`, returning `columns` of the rows it changed
/// packed as [`select_packed`] reads them. `columns` must be ones the update leaves as they
/// were. PostgreSQL aggregates the update's `RETURNING` rows (a data-modifying `WITH`);
/// SQLite, whose `RETURNING` rows cannot be aggregated, reads the rows the filter matches and
/// then updates them (by row id) in the same write transaction, which holds the write lock from its start
/// (`BEGIN IMMEDIATE`), so no other writer comes between.
/// `set` and `filter` bind their values into the statement they are given. A column the update
/// does change can be read all the same when `before` gives, for SQLite, the columns as
/// expressions of the row before the update that make their values after it (`attempts + 1`).
pub(super) async fn update_packed<T: serde::de::DeserializeOwned>(
    txn: &DatabaseTransaction,
    backend: Backend,
    table: &str,
    set: impl Fn(&mut Params) -> String,
    filter: impl Fn(&mut Params) -> String,
    columns: &str,
    before: Option<&str>,
) -> Result<Vec<T>> {
    match backend {
        Backend::Sqlite => {
            let mut q = Params::new(backend);
            let rest = format!("FROM {table} WHERE {}", filter(&mut q));
            let columns = format!("rowid, json_array({})", before.unwrap_or(columns));
            let rows: Vec<(i64, T)> = select_packed(txn, q, &columns, &rest).await?;
            // The rows read are updated by their row ids: the filter (an ordered, limited
            // subquery as often as not) is not evaluated twice.
            let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
            for chunk in ids.chunks(ROWS) {
                let mut q = Params::new(backend);
                let set = set(&mut q);
                let sql = format!(
                    "UPDATE {table} SET {set} WHERE rowid IN ({})",
                    q.list(chunk)
                );
                txn.execute_raw(q.statement(sql)).await?;
            }
            Ok(rows.into_iter().map(|(_, row)| row).collect())
        }
        Backend::Postgres => {
            let mut q = Params::new(backend);
            let set = set(&mut q);
            let filter = filter(&mut q);
            let sql = format!(
                "WITH changed AS (UPDATE {table} SET {set} WHERE {filter} RETURNING {columns}) \
                 SELECT COALESCE(json_agg(json_build_array({columns})), '[]')::text FROM changed"
            );
            unpack(txn.query_one_raw(q.statement(sql)).await?)
        }
    }
}

/// The rows of a packed answer.
fn unpack<T: serde::de::DeserializeOwned>(row: Option<sea_orm::QueryResult>) -> Result<Vec<T>> {
    let Some(row) = row else {
        return Ok(Vec::new());
    };
    let text: String = row.try_get_by_index(0)?;
    serde_json::from_str(&text)
        .map_err(|e| super::StoreError::Corrupt(format!("rows read as JSON: {e}")))
}

/// Inserts `rows` as [`insert_rows`] does and returns `columns` of the rows it inserted,
/// packed as [`select_packed`] reads them. `tail` may skip conflicting rows (`ON CONFLICT …
/// DO NOTHING`) but not update them, and `table` must have an integer primary key `id`.
/// PostgreSQL aggregates the insert's `RETURNING` rows (a data-modifying `WITH`); on SQLite a
/// new row's id is one more than the largest before it, so the rows inserted are those past
/// the largest id read first, in the same `BEGIN IMMEDIATE` transaction (no other writer).
pub(super) async fn insert_packed<T: serde::de::DeserializeOwned>(
    txn: &DatabaseTransaction,
    backend: Backend,
    table: &str,
    head: &str,
    tail: &str,
    rows: Vec<Vec<Value>>,
    columns: &str,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for chunk in chunks(rows) {
        let mut q = Params::new(backend);
        let values = q.values(chunk);
        let insert = insert_sql(&format!("{table} {head}"), &values, tail);
        match backend {
            Backend::Sqlite => {
                let largest = Params::new(backend)
                    .statement(format!("SELECT COALESCE(MAX(id), 0) FROM {table}"));
                let before: i64 = match txn.query_one_raw(largest).await? {
                    Some(r) => r.try_get_by_index(0)?,
                    None => 0,
                };
                txn.execute_raw(q.statement(insert)).await?;
                let mut p = Params::new(backend);
                let rest = format!("FROM {table} WHERE id > {}", p.p(before));
                out.extend(select_packed::<T>(txn, p, columns, &rest).await?);
            }
            Backend::Postgres => {
                let sql = format!(
                    "WITH inserted AS ({insert} RETURNING {columns}) \
                     SELECT COALESCE(json_agg(json_build_array({columns})), '[]')::text \
                     FROM inserted"
                );
                out.extend(unpack::<T>(txn.query_one_raw(q.statement(sql)).await?)?);
            }
        }
    }
    Ok(out)
}

/// Which of a funnel's leads a read of its rows takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Leads {
    All,
    /// The ids in `[first, end)`.
    Range(i64, i64),
    /// These ids.
    List(Vec<i64>),
}

impl Leads {
    /// The condition on `lead_id` that takes them (`AND …`), its values bound in `q`.
    pub(super) fn filter(&self, q: &mut Params) -> String {
        match self {
            Leads::All => String::new(),
            Leads::Range(first, end) => {
                format!(
                    " AND lead_id >= {} AND lead_id < {}",
                    q.p(*first),
                    q.p(*end)
                )
            }
            // The ids as one value, so the statement is the same whatever they are (a list
            // of placeholders is parsed again at each binding on SQLite, as its values may
            // change the plan).
            Leads::List(ids) => {
                let text = |open, close| {
                    let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
                    format!("{open}{}{close}", ids.join(","))
                };
                match q.backend {
                    Backend::Sqlite => format!(
                        " AND lead_id IN (SELECT value FROM json_each({}))",
                        q.p(text("[", "]"))
                    ),
                    Backend::Postgres => {
                        format!(
                            " AND lead_id = ANY(CAST({} AS BIGINT[]))",
                            q.p(text("{", "}"))
                        )
                    }
                }
            }
        }
    }
}

//! The report counters' primary key ordered as reports read them: funnel, origin, view,
//! stage, metric, then day. A report sums each counter over its days: in this order the sums
//! come straight off the key (no sort of the period's rows), and on SQLite the table is
//! `WITHOUT ROWID`, each counter stored in its key's b-tree (one b-tree written per counter
//! added, and the counts read beside their keys). The rows are copied as they are.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const COLUMNS: &str = "funnel_id, origin, day, view, stage, metric, n, total";

/// The table with its key in `key` order.
fn table(name: &str, key: &str, without_rowid: bool) -> String {
    format!(
        "CREATE TABLE {name} (funnel_id varchar NOT NULL, origin varchar NOT NULL, \
         day bigint NOT NULL, view varchar NOT NULL, stage varchar NOT NULL, \
         metric varchar NOT NULL, n bigint NOT NULL, total bigint NOT NULL, \
         PRIMARY KEY ({key})){}",
        if without_rowid { " WITHOUT ROWID" } else { "" }
    )
}

pub(crate) async fn rekey(m: &SchemaManager<'_>, key: &str) -> Result<(), DbErr> {
    let db = m.get_connection();
    match m.get_database_backend() {
        DatabaseBackend::Sqlite => {
            // One batch, so one connection of the pool runs it all (another's cached schema
            // may not know the new table yet).
            let sql = format!(
                "{}; INSERT INTO report_counts_new ({COLUMNS}) SELECT {COLUMNS} FROM report_counts; \
                 DROP TABLE report_counts; ALTER TABLE report_counts_new RENAME TO report_counts;",
                table("report_counts_new", key, true)
            );
            db.execute_unprepared(&sql).await?;
        }
        _ => {
            db.execute_unprepared(&format!(
                "ALTER TABLE report_counts DROP CONSTRAINT report_counts_pkey, \
                 ADD PRIMARY KEY ({key})"
            ))
            .await?;
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        rekey(m, "funnel_id, origin, view, stage, metric, day").await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        rekey(m, "funnel_id, origin, day, view, stage, metric").await
    }
}

//! PostgreSQL: the tables rewritten row by row all day — runs, emails, leads and the report
//! counters — leave room in each page (`fillfactor`), so an update can keep the new row
//! version on the same page (a HOT update: no index touched, the old version pruned without a
//! vacuum), and are vacuumed after 5 % of their rows changed rather than 20 %, so a table of a
//! million runs does not wait for 200,000 dead rows. New pages follow the setting; pages
//! written before do so once rewritten. SQLite: nothing to do.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Each hot table and the fill it leaves.
const HOT: [(&str, u32); 4] = [
    ("enrollments", 80),
    ("messages", 80),
    ("report_counts", 80),
    ("leads", 90),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() != DatabaseBackend::Postgres {
            return Ok(());
        }
        for (table, fill) in HOT {
            m.get_connection()
                .execute_unprepared(&format!(
                    "ALTER TABLE {table} SET (fillfactor = {fill}, \
                     autovacuum_vacuum_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.05)"
                ))
                .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() != DatabaseBackend::Postgres {
            return Ok(());
        }
        for (table, _) in HOT {
            m.get_connection()
                .execute_unprepared(&format!(
                    "ALTER TABLE {table} RESET (fillfactor, autovacuum_vacuum_scale_factor, \
                     autovacuum_analyze_scale_factor)"
                ))
                .await?;
        }
        Ok(())
    }
}

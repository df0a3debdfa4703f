//! Report counters kept by the hour, in a table of their own (`report_hours`, all runs
//! together, so no origin): all runs' counters by the hour they are filed under (`view`
//! `entry@hour`, `calendar@hour`, `day` holding hours since 1970) and by the hours after a
//! run's entry (`entry+hNNN`, `day` the entry's day). A report over hours that are not whole
//! days of the counters' zone (another zone, a period starting on an hour) and a conversion
//! window of whole hours read them. Apart from `report_counts`, so the reads of that table
//! (every origin's counters of a view) do not pass over them; keyed by the hour before the
//! metric, so a report reads only the hours it needs. The store counts the stored
//! rows again after this migration, which makes them for what came before.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // Rewritten all day like `report_counts`: on PostgreSQL, room in each page for HOT
        // updates and an earlier vacuum (as the hot tables have).
        let storage = match m.get_database_backend() {
            DatabaseBackend::Sqlite => " WITHOUT ROWID",
            _ => {
                " WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.05, \
                 autovacuum_analyze_scale_factor = 0.05)"
            }
        };
        m.get_connection()
            .execute_unprepared(&format!(
                "CREATE TABLE IF NOT EXISTS report_hours (funnel_id varchar NOT NULL, view varchar NOT NULL, \
                 stage varchar NOT NULL, metric varchar NOT NULL, day bigint NOT NULL, \
                 n bigint NOT NULL, total bigint NOT NULL, \
                 PRIMARY KEY (funnel_id, view, day, stage, metric)){storage}"
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS report_hours")
            .await?;
        Ok(())
    }
}

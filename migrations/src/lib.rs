//! Database migrations of autofunnel. The same migrations run on SQLite and PostgreSQL; every
//! timestamp is a BIGINT of milliseconds since the Unix epoch (UTC), so comparisons on the hot
//! `wake_at` index are plain integer comparisons on both.

pub use sea_orm_migration::prelude::*;

/// A migration with no schema change, applied for what its name asks at start (the report
/// counters made again from the rows for a name ending `_report_counts`, the stored
/// suppressions rewritten for `hashed_suppressions`).
#[macro_export]
macro_rules! no_schema_change {
    () => {
        use sea_orm_migration::prelude::*;

        #[derive(DeriveMigrationName)]
        pub struct Migration;

        #[async_trait::async_trait]
        impl MigrationTrait for Migration {
            async fn up(&self, _: &SchemaManager) -> Result<(), DbErr> {
                Ok(())
            }

            async fn down(&self, _: &SchemaManager) -> Result<(), DbErr> {
                Ok(())
            }
        }
    };
}

/// A migration that adds one index, `$name`, made by the statement `$create` (the same on both
/// backends: sea-query builds no partial index for SQLite), and drops it going down.
#[macro_export]
macro_rules! one_index {
    ($name:literal, $create:expr) => {
        use sea_orm_migration::prelude::*;
        use sea_orm_migration::sea_orm::ConnectionTrait;

        #[derive(DeriveMigrationName)]
        pub struct Migration;

        #[async_trait::async_trait]
        impl MigrationTrait for Migration {
            async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
                m.get_connection().execute_unprepared($create).await?;
                Ok(())
            }

            async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
                let drop = concat!("DROP INDEX IF EXISTS ", $name);
                m.get_connection().execute_unprepared(drop).await?;
                Ok(())
            }
        }
    };
}

mod m20261123_000001_init;
mod m20261124_000002_stage_entry;
mod m20261124_000003_pending_events;
mod m20261124_000004_lead_lease;
mod m20261124_000005_unstarted_signups;
mod m20261129_000006_milestones;
mod m20261129_000007_report_indexes;
mod m20261129_000008_report_counts;
mod m20261129_000009_email_marks;
mod m20261204_000010_exact_report_counts;
mod m20261205_000011_range_reads;
mod m20261206_000012_consents;
mod m20261206_000013_score_decay;
mod m20261206_000014_window_report_counts;
mod m20261206_000015_consent_text_hash;
mod m20261206_000016_hashed_suppressions;
mod m20261206_000017_ab_report_counts;
mod m20261206_000018_refund_report_counts;
mod m20261206_000019_counters_by_metric;
mod m20261206_000020_hot_tables;
mod m20261207_000021_hour_report_counts;
mod m20261207_000022_window_origin_report_counts;
mod m20261207_000023_order_events_index;
mod m20261207_000024_lookback_report_counts;
mod m20261207_000025_long_hour_windows_report_counts;
mod m20261207_000026_mail_window_report_counts;
mod m20261207_000027_counters_by_view;
mod m20261207_000028_failed_webhooks_index;
mod m20261207_000029_calendar_and_mail_hour_windows_report_counts;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_init::Migration),
            Box::new(m20261124_000002_stage_entry::Migration),
            Box::new(m20261124_000003_pending_events::Migration),
            Box::new(m20261124_000004_lead_lease::Migration),
            Box::new(m20261124_000005_unstarted_signups::Migration),
            Box::new(m20261129_000006_milestones::Migration),
            Box::new(m20261129_000007_report_indexes::Migration),
            Box::new(m20261129_000008_report_counts::Migration),
            Box::new(m20261129_000009_email_marks::Migration),
            Box::new(m20261204_000010_exact_report_counts::Migration),
            Box::new(m20261205_000011_range_reads::Migration),
            Box::new(m20261206_000012_consents::Migration),
            Box::new(m20261206_000013_score_decay::Migration),
            Box::new(m20261206_000014_window_report_counts::Migration),
            Box::new(m20261206_000015_consent_text_hash::Migration),
            Box::new(m20261206_000016_hashed_suppressions::Migration),
            Box::new(m20261206_000017_ab_report_counts::Migration),
            Box::new(m20261206_000018_refund_report_counts::Migration),
            Box::new(m20261206_000019_counters_by_metric::Migration),
            Box::new(m20261206_000020_hot_tables::Migration),
            Box::new(m20261207_000021_hour_report_counts::Migration),
            Box::new(m20261207_000022_window_origin_report_counts::Migration),
            Box::new(m20261207_000023_order_events_index::Migration),
            Box::new(m20261207_000024_lookback_report_counts::Migration),
            Box::new(m20261207_000025_long_hour_windows_report_counts::Migration),
            Box::new(m20261207_000026_mail_window_report_counts::Migration),
            Box::new(m20261207_000027_counters_by_view::Migration),
            Box::new(m20261207_000028_failed_webhooks_index::Migration),
            Box::new(m20261207_000029_calendar_and_mail_hour_windows_report_counts::Migration),
        ]
    }
}

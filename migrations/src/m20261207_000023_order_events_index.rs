//! Reports and recounts read the orders (purchases and refunds) of a range of leads; through
//! the index by lead and kind each lead's every event was visited to find them. A partial
//! index holds the orders alone, by lead and time, so a range's orders are found without the
//! clicks, opens and page views around them; every other event costs no index insert.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // The same statement on both backends (sea-query builds no partial index for SQLite).
        m.get_connection()
            .execute_unprepared(
                "CREATE INDEX IF NOT EXISTS idx_events_orders ON events (lead_id, occurred_at) \
                 WHERE kind IN ('purchase', 'refund')",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.get_connection()
            .execute_unprepared("DROP INDEX IF EXISTS idx_events_orders")
            .await?;
        Ok(())
    }
}

//! The dashboard's overview counts the failed webhook calls and the admin API lists them,
//! newest first; with no index that holds them, each walked the whole outbox (every email
//! ever queued: 0.3–0.5 s at a million leads). A partial index holds the failed calls alone,
//! by id; every other message costs no index insert.

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
                "CREATE INDEX IF NOT EXISTS idx_messages_failed_webhooks ON messages (id) \
                 WHERE kind = 'webhook' AND status = 'failed'",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.get_connection()
            .execute_unprepared("DROP INDEX IF EXISTS idx_messages_failed_webhooks")
            .await?;
        Ok(())
    }
}

//! A partial index over the live runs (`active`, `unconfirmed`) by funnel, stage, step and
//! status with their wake-ups, so where every funnel's live runs stand (`Store::waiting`: the
//! dashboard's overview, `autofunnel status`) is read from the live runs alone, not from every
//! run ever made.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.get_connection()
            .execute_unprepared(
                "CREATE INDEX IF NOT EXISTS idx_enrollments_live ON enrollments \
                 (funnel_id, stage_id, step_id, status, wake_at) \
                 WHERE status IN ('active', 'unconfirmed')",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.get_connection()
            .execute_unprepared("DROP INDEX IF EXISTS idx_enrollments_live")
            .await?;
        Ok(())
    }
}

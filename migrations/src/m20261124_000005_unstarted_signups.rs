//! `events.processed_at` is set when an event's consequences are committed. Signups are stored
//! before their form's funnels start (two transactions); one left without `processed_at` after
//! a crash between the two is started again. Events stored before now are all processed.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.get_connection()
            .execute_unprepared(
                "UPDATE events SET processed_at = received_at WHERE processed_at IS NULL",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, _: &SchemaManager) -> Result<(), DbErr> {
        Ok(())
    }
}

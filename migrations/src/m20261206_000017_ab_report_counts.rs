//! A/B counters (`ab␟STEP␟TEMPLATE␟WHAT`) and each run's first email of a step marked
//! (`messages.marks` bit 32), so the A/B report reads counters. The tables are unchanged; the
//! store counts the stored rows again after this migration, which makes the counters, the
//! marks and the steps each run sent from (`enrollments.reached`) for what came before.

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

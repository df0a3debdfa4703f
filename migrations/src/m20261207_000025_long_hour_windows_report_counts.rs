//! The hours after entry are kept up to 999 (41 days and 15 hours) instead of a week, so a
//! conversion window of whole hours past a week (`200h`) reads counters. No schema change: the
//! recount this migration asks for makes the new counters for what came before.

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

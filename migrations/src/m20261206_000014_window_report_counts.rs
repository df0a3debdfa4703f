//! Report counters by the days after a run's entry (`view` `entry+NNN`), so a funnel report
//! with a conversion window of whole days reads counters. The table is unchanged; the store
//! counts the stored rows again after this migration, which makes them for what came before.

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

//! Report counters of all runs by the hour (`view` `entry@hour`, `calendar@hour`) and by the
//! hours after a run's entry (`entry+hNNN`), so a report over hours that are not whole days of
//! the counters' zone (another zone, a period starting on an hour) and a conversion window of
//! whole hours read counters. The table is unchanged; the store counts the stored rows again
//! after this migration, which makes them for what came before.

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

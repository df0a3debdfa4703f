//! The counters of conversion windows of whole days (`entry+NNN`) kept per origin too, so a
//! window sliced by source, channel, form, a kept field or the A/B variant reads counters. No
//! change to the tables: the store counts the stored rows again after this migration, which
//! makes the new counters for what came before.

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

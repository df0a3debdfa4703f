//! Refunds in the report counters (`refund␟PRODUCT␟CURRENCY`): a `refund` event takes its
//! money off the order it gives back on. The table is unchanged; the store counts the stored
//! rows again after this migration, which counts the refunds stored before.

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

//! When a lead's score last changed, so a funnel's `scoring.decay` is applied on read (the
//! points lost since then) with no job sweeping every lead.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Leads {
    Table,
    ScoredAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.has_column("leads", "scored_at").await? {
            return Ok(());
        }
        m.alter_table(
            Table::alter()
                .table(Leads::Table)
                .add_column(big_integer_null(Leads::ScoredAt))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Leads::Table)
                .drop_column(Leads::ScoredAt)
                .to_owned(),
        )
        .await
    }
}

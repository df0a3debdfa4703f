//! A lease on the lead as well as on each enrollment: a worker steps a lead's enrollments only
//! while it holds the lead, so two workers never act on one lead (its frequency cap, fields and
//! score are shared by all its funnels).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Leads {
    Table,
    LeaseOwner,
    LeaseUntil,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One change per ALTER: SQLite allows no more.
        m.alter_table(
            Table::alter()
                .table(Leads::Table)
                .add_column(string_null(Leads::LeaseOwner))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Leads::Table)
                .add_column(big_integer_null(Leads::LeaseUntil))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for c in [Leads::LeaseUntil, Leads::LeaseOwner] {
            m.alter_table(Table::alter().table(Leads::Table).drop_column(c).to_owned())
                .await?;
        }
        Ok(())
    }
}

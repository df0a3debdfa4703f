//! Enrollments count their stage entries, so each entry's emails have their own send keys.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Enrollments {
    Table,
    StageEntry,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One change per ALTER: SQLite allows no more.
        m.alter_table(
            Table::alter()
                .table(Enrollments::Table)
                .add_column(integer(Enrollments::StageEntry).default(0))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Enrollments::Table)
                .drop_column(Enrollments::StageEntry)
                .to_owned(),
        )
        .await
    }
}

//! Events reach enrollments durably: each enrollment remembers the last event it consumed, and
//! an arriving event marks the lead's enrollments pending so a scheduler round picks them up
//! even when another worker held them at that moment.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Enrollments {
    Table,
    EventsSeen,
    PendingAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One change per ALTER: SQLite allows no more.
        m.alter_table(
            Table::alter()
                .table(Enrollments::Table)
                .add_column(big_integer(Enrollments::EventsSeen).default(0))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Enrollments::Table)
                .add_column(big_integer_null(Enrollments::PendingAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_enrollments_pending_at")
                .table(Enrollments::Table)
                .col(Enrollments::PendingAt)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("idx_enrollments_pending_at")
                .table(Enrollments::Table)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Enrollments::Table)
                .drop_column(Enrollments::PendingAt)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Enrollments::Table)
                .drop_column(Enrollments::EventsSeen)
                .to_owned(),
        )
        .await
    }
}

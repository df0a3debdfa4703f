//! Score milestones: when a run's lead first crossed its funnel's `mql` or `sql` threshold (a
//! row per crossing), so reports count qualified leads per stage and period. Kept apart from
//! `events`, which are fed to the runs: a milestone is something a run did, not news for it.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Milestones {
    Table,
    Id,
    EnrollmentId,
    LeadId,
    FunnelId,
    Kind,
    OccurredAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Milestones::Table)
                .col(big_pk_auto(Milestones::Id))
                .col(big_integer(Milestones::EnrollmentId))
                .col(big_integer(Milestones::LeadId))
                .col(string(Milestones::FunnelId))
                .col(string(Milestones::Kind))
                .col(big_integer(Milestones::OccurredAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_milestones_funnel")
                .table(Milestones::Table)
                .col(Milestones::FunnelId)
                .col(Milestones::OccurredAt)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_milestones_lead")
                .table(Milestones::Table)
                .col(Milestones::LeadId)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(Milestones::Table).to_owned())
            .await
    }
}

//! Report counters: a funnel's figures summed per day, view, origin, stage and metric, kept in
//! the transactions that write the facts (see `src/tally.rs`), so a report reads a few sums
//! instead of every row. Each run keeps where its lead came from (`origin`, the first touch)
//! and what it has reached (`reached`: stages entered, milestones crossed), so each counter
//! counts a run once. Counters for the rows already stored are made after this migration by
//! the store, from those rows.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ReportCounts {
    Table,
    FunnelId,
    Origin,
    Day,
    View,
    Stage,
    Metric,
    N,
    Total,
}

#[derive(DeriveIden)]
enum Enrollments {
    Table,
    Origin,
    Reached,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(ReportCounts::Table)
                .col(string(ReportCounts::FunnelId))
                .col(string(ReportCounts::Origin))
                .col(big_integer(ReportCounts::Day))
                .col(string(ReportCounts::View))
                .col(string(ReportCounts::Stage))
                .col(string(ReportCounts::Metric))
                .col(big_integer(ReportCounts::N))
                .col(double(ReportCounts::Total))
                .primary_key(
                    Index::create()
                        .col(ReportCounts::FunnelId)
                        .col(ReportCounts::Origin)
                        .col(ReportCounts::Day)
                        .col(ReportCounts::View)
                        .col(ReportCounts::Stage)
                        .col(ReportCounts::Metric),
                )
                .to_owned(),
        )
        .await?;
        // One change per ALTER: SQLite allows no more.
        m.alter_table(
            Table::alter()
                .table(Enrollments::Table)
                .add_column(string_null(Enrollments::Origin))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Enrollments::Table)
                .add_column(string(Enrollments::Reached).default(""))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for c in [Enrollments::Origin, Enrollments::Reached] {
            m.alter_table(
                Table::alter()
                    .table(Enrollments::Table)
                    .drop_column(c)
                    .to_owned(),
            )
            .await?;
        }
        m.drop_table(Table::drop().table(ReportCounts::Table).to_owned())
            .await
    }
}

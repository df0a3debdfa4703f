//! Report counters with exact sums: `total` holds millionths of a unit (of a currency, or of
//! one order's credit) as a whole number, so the same facts sum to the same figure in
//! whatever order they are added. The table is made anew; the store counts the stored rows
//! again after this migration. And `store_settings`: what the store keeps about itself, such
//! as the time zone whose days the counters are kept in. And `pending_entries`: the tags and
//! events a write produced that start another funnel, kept until that funnel has started.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PendingEntries {
    Table,
    Id,
    LeadId,
    Trigger,
    CreatedAt,
}

#[derive(DeriveIden)]
enum StoreSettings {
    Table,
    Name,
    Value,
}

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

/// The counters' table, its sums of money as `total`'s type.
fn table(total: ColumnDef) -> TableCreateStatement {
    Table::create()
        .table(ReportCounts::Table)
        .col(string(ReportCounts::FunnelId))
        .col(string(ReportCounts::Origin))
        .col(big_integer(ReportCounts::Day))
        .col(string(ReportCounts::View))
        .col(string(ReportCounts::Stage))
        .col(string(ReportCounts::Metric))
        .col(big_integer(ReportCounts::N))
        .col(total)
        .primary_key(
            Index::create()
                .col(ReportCounts::FunnelId)
                .col(ReportCounts::Origin)
                .col(ReportCounts::Day)
                .col(ReportCounts::View)
                .col(ReportCounts::Stage)
                .col(ReportCounts::Metric),
        )
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(ReportCounts::Table).to_owned())
            .await?;
        m.create_table(table(big_integer(ReportCounts::Total)))
            .await?;
        m.create_table(
            Table::create()
                .table(StoreSettings::Table)
                .if_not_exists()
                .col(string(StoreSettings::Name).primary_key())
                .col(string(StoreSettings::Value))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(PendingEntries::Table)
                .if_not_exists()
                .col(big_pk_auto(PendingEntries::Id))
                .col(big_integer(PendingEntries::LeadId))
                .col(string(PendingEntries::Trigger))
                .col(big_integer(PendingEntries::CreatedAt))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(PendingEntries::Table).to_owned())
            .await?;
        m.drop_table(Table::drop().table(StoreSettings::Table).to_owned())
            .await?;
        m.drop_table(Table::drop().table(ReportCounts::Table).to_owned())
            .await?;
        m.create_table(table(double(ReportCounts::Total))).await
    }
}

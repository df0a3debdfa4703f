//! Consent records: when a lead's consent was given (or withdrawn), from which source (a
//! form, an import from another service), with which consent text, from which address and
//! browser — the proof the sender must keep (GDPR art. 7, 38-ФЗ art. 18). A lead's `consent`
//! column stays its current status; these rows are its history.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Consents {
    Table,
    Id,
    LeadId,
    Status,
    Source,
    TextVersion,
    Ip,
    UserAgent,
    RecordedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Consents::Table)
                .if_not_exists()
                .col(big_pk_auto(Consents::Id))
                .col(big_integer(Consents::LeadId))
                .col(string(Consents::Status))
                .col(string_null(Consents::Source))
                .col(string_null(Consents::TextVersion))
                .col(string_null(Consents::Ip))
                .col(string_null(Consents::UserAgent))
                .col(big_integer(Consents::RecordedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_consents_lead")
                .if_not_exists()
                .table(Consents::Table)
                .col(Consents::LeadId)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(Consents::Table).to_owned())
            .await
    }
}

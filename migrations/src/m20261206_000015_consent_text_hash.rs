//! The SHA-256 of the consent text a form showed, kept with each consent given through it
//! (beside `text_version`, the text's file): which words the lead agreed to.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Consents {
    Table,
    TextSha256,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.has_column("consents", "text_sha256").await? {
            return Ok(());
        }
        m.alter_table(
            Table::alter()
                .table(Consents::Table)
                .add_column(string_null(Consents::TextSha256))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Consents::Table)
                .drop_column(Consents::TextSha256)
                .to_owned(),
        )
        .await
    }
}

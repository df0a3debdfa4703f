//! Per-email counters: each email keeps what has happened to it since it was queued (`marks`:
//! opened, clicked, unsubscribed after it, bounced, complained about, as bits) and each link
//! clicked in it (`email_links`), so a second open or click of the same email is not counted
//! again. Marks and counters for the rows already stored are made after this migration by the
//! store, from the tracked events.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Messages {
    Table,
    Marks,
}

#[derive(DeriveIden)]
enum EmailLinks {
    Table,
    MessageId,
    Link,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Messages::Table)
                .add_column(big_integer(Messages::Marks).default(0))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(EmailLinks::Table)
                .col(big_integer(EmailLinks::MessageId))
                .col(string(EmailLinks::Link))
                .primary_key(
                    Index::create()
                        .col(EmailLinks::MessageId)
                        .col(EmailLinks::Link),
                )
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(EmailLinks::Table).to_owned())
            .await?;
        m.alter_table(
            Table::alter()
                .table(Messages::Table)
                .drop_column(Messages::Marks)
                .to_owned(),
        )
        .await
    }
}

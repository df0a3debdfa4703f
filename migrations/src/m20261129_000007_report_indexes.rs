//! Indexes the reports read through: a funnel's runs by entry time, its emails by time, and
//! events by kind (purchases, clicks and opens without reading every page view).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEXES: [(&str, &str, &[&str]); 3] = [
    (
        "idx_enrollments_funnel_entered",
        "enrollments",
        &["funnel_id", "entered_at"],
    ),
    (
        "idx_messages_funnel_created",
        "messages",
        &["funnel_id", "created_at"],
    ),
    ("idx_events_kind_time", "events", &["kind", "occurred_at"]),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (name, table, cols) in INDEXES {
            let mut i = Index::create();
            i.name(name).table(Alias::new(table));
            for c in cols {
                i.col(Alias::new(*c));
            }
            m.create_index(i.to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (name, table, _) in INDEXES {
            m.drop_index(Index::drop().name(name).table(Alias::new(table)).to_owned())
                .await?;
        }
        Ok(())
    }
}

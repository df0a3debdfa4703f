//! Reports read a funnel's emails and stage visits a range of leads at a time, through the
//! lead and run indexes; the per-funnel time indexes on those two tables are no longer read
//! and cost every email queued and every stage entered an index insert: dropped.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEXES: [(&str, &str, &[&str]); 2] = [
    (
        "idx_messages_funnel_created",
        "messages",
        &["funnel_id", "created_at"],
    ),
    (
        "idx_stage_history_funnel_entered",
        "stage_history",
        &["funnel_id", "entered_at"],
    ),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (name, table, _) in INDEXES {
            let mut drop = Index::drop();
            drop.name(name).table(Alias::new(table)).if_exists();
            m.drop_index(drop.to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (name, table, cols) in INDEXES {
            let mut i = Index::create();
            i.name(name).table(Alias::new(table)).if_not_exists();
            for c in cols {
                i.col(Alias::new(*c));
            }
            m.create_index(i.to_owned()).await?;
        }
        Ok(())
    }
}

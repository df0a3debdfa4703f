//! The report counters' primary key with the view before the origin: funnel, view, origin,
//! stage, metric, then day. A sliced report reads one view of every origin; with the origin
//! first that read walked every counter of the funnel (each view of each origin), with the
//! view first it walks that view's alone (a fifth of them at a million leads). The reads of all
//! runs together (the origin `''`) find their rows as before, the key's first three columns
//! held. The rows are copied as they are (no recount).

use sea_orm_migration::prelude::*;

use crate::m20261206_000019_counters_by_metric::rekey;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        rekey(m, "funnel_id, view, origin, stage, metric, day").await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        rekey(m, "funnel_id, origin, view, stage, metric, day").await
    }
}

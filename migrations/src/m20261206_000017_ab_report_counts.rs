//! A/B counters (`ab␟STEP␟TEMPLATE␟WHAT`), kept for the emails of `split` steps: each such
//! email marked a variant when queued (`messages.marks` bit 64), a run's first of its step
//! marked too (bit 32), so the A/B report reads counters. Emails stored before were queued
//! without the mark: those of a step that sent more than one template (a split, as far as the
//! rows can tell) are marked here. The store then counts the stored rows again, which makes the
//! first-email marks, the steps each run sent from (`enrollments.reached`) and the counters.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.get_connection()
            .execute_unprepared(
                "UPDATE messages SET marks = marks | 64 \
                 WHERE kind = 'email' AND step_id IS NOT NULL AND stage_id IS NOT NULL \
                 AND (funnel_id, stage_id, step_id) IN ( \
                   SELECT funnel_id, stage_id, step_id FROM messages \
                   WHERE kind = 'email' AND step_id IS NOT NULL AND stage_id IS NOT NULL \
                   GROUP BY funnel_id, stage_id, step_id HAVING COUNT(DISTINCT template) > 1)",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.get_connection()
            .execute_unprepared("UPDATE messages SET marks = marks & ~96")
            .await?;
        Ok(())
    }
}

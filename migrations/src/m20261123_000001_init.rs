//! The first schema: leads, their tags and touches, funnel versions, enrollments with durable
//! wake-ups, stage history, events, the outbox and suppressions.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Leads {
    Table,
    Id,
    Email,
    FirstName,
    Fields,
    Timezone,
    Consent,
    Score,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum LeadTags {
    Table,
    LeadId,
    Tag,
    CreatedAt,
}

#[derive(DeriveIden)]
enum FunnelVersions {
    Table,
    Id,
    FunnelId,
    Version,
    Hash,
    Source,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Enrollments {
    Table,
    Id,
    LeadId,
    FunnelId,
    FunnelVersion,
    StageId,
    StepId,
    StepIndex,
    Status,
    WakeAt,
    DeadlineAt,
    StageEnteredAt,
    EnteredAt,
    ExitedAt,
    Outcome,
    LeaseOwner,
    LeaseUntil,
    Attempts,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum StageHistory {
    Table,
    Id,
    EnrollmentId,
    LeadId,
    FunnelId,
    StageId,
    EnteredAt,
    ExitedAt,
    ExitReason,
    NextStageId,
}

#[derive(DeriveIden)]
enum Events {
    Table,
    Id,
    LeadId,
    Kind,
    Payload,
    IdempotencyKey,
    OccurredAt,
    ReceivedAt,
    ProcessedAt,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    Id,
    Kind,
    LeadId,
    EnrollmentId,
    FunnelId,
    StageId,
    StepId,
    Template,
    SendKey,
    Recipient,
    Payload,
    Status,
    Attempts,
    NextAttemptAt,
    LeaseUntil,
    LastError,
    CreatedAt,
    SentAt,
}

#[derive(DeriveIden)]
enum Suppressions {
    Table,
    Id,
    Email,
    Scope,
    Reason,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Touches {
    Table,
    Id,
    LeadId,
    OccurredAt,
    Channel,
    Source,
    Medium,
    Campaign,
    Term,
    Content,
    Referrer,
    LandingUrl,
    FormId,
}

fn index(name: &str, table: impl IntoIden, cols: &[&'static str]) -> IndexCreateStatement {
    let mut i = Index::create();
    i.name(name).table(table);
    for c in cols {
        i.col(Alias::new(*c));
    }
    i.to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Leads::Table)
                .col(big_pk_auto(Leads::Id))
                .col(string_uniq(Leads::Email))
                .col(string_null(Leads::FirstName))
                .col(text(Leads::Fields).default("{}"))
                .col(string_null(Leads::Timezone))
                .col(string(Leads::Consent).default("pending"))
                .col(big_integer(Leads::Score).default(0))
                .col(big_integer(Leads::CreatedAt))
                .col(big_integer(Leads::UpdatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(LeadTags::Table)
                .col(big_integer(LeadTags::LeadId))
                .col(string(LeadTags::Tag))
                .col(big_integer(LeadTags::CreatedAt))
                .primary_key(Index::create().col(LeadTags::LeadId).col(LeadTags::Tag))
                .foreign_key(
                    ForeignKey::create()
                        .from(LeadTags::Table, LeadTags::LeadId)
                        .to(Leads::Table, Leads::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(index("idx_lead_tags_tag", LeadTags::Table, &["tag"]))
            .await?;

        m.create_table(
            Table::create()
                .table(FunnelVersions::Table)
                .col(big_pk_auto(FunnelVersions::Id))
                .col(string(FunnelVersions::FunnelId))
                .col(integer(FunnelVersions::Version))
                .col(string(FunnelVersions::Hash))
                .col(text(FunnelVersions::Source))
                .col(big_integer(FunnelVersions::CreatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            index(
                "idx_funnel_versions_unique",
                FunnelVersions::Table,
                &["funnel_id", "version"],
            )
            .unique()
            .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Enrollments::Table)
                .col(big_pk_auto(Enrollments::Id))
                .col(big_integer(Enrollments::LeadId))
                .col(string(Enrollments::FunnelId))
                .col(integer(Enrollments::FunnelVersion))
                .col(string(Enrollments::StageId))
                .col(string_null(Enrollments::StepId))
                .col(integer(Enrollments::StepIndex).default(0))
                .col(string(Enrollments::Status))
                .col(big_integer_null(Enrollments::WakeAt))
                .col(big_integer_null(Enrollments::DeadlineAt))
                .col(big_integer(Enrollments::StageEnteredAt))
                .col(big_integer(Enrollments::EnteredAt))
                .col(big_integer_null(Enrollments::ExitedAt))
                .col(string_null(Enrollments::Outcome))
                .col(string_null(Enrollments::LeaseOwner))
                .col(big_integer_null(Enrollments::LeaseUntil))
                .col(integer(Enrollments::Attempts).default(0))
                .col(big_integer(Enrollments::UpdatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(Enrollments::Table, Enrollments::LeadId)
                        .to(Leads::Table, Leads::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        // The durable timer: the scheduler claims `wake_at <= now` in this order.
        m.create_index(index(
            "idx_enrollments_wake_at",
            Enrollments::Table,
            &["wake_at"],
        ))
        .await?;
        m.create_index(index(
            "idx_enrollments_lead_funnel",
            Enrollments::Table,
            &["lead_id", "funnel_id"],
        ))
        .await?;
        m.create_index(index(
            "idx_enrollments_funnel_stage",
            Enrollments::Table,
            &["funnel_id", "stage_id", "status"],
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(StageHistory::Table)
                .col(big_pk_auto(StageHistory::Id))
                .col(big_integer(StageHistory::EnrollmentId))
                .col(big_integer(StageHistory::LeadId))
                .col(string(StageHistory::FunnelId))
                .col(string(StageHistory::StageId))
                .col(big_integer(StageHistory::EnteredAt))
                .col(big_integer_null(StageHistory::ExitedAt))
                .col(string_null(StageHistory::ExitReason))
                .col(string_null(StageHistory::NextStageId))
                .foreign_key(
                    ForeignKey::create()
                        .from(StageHistory::Table, StageHistory::EnrollmentId)
                        .to(Enrollments::Table, Enrollments::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "idx_stage_history_enrollment",
            StageHistory::Table,
            &["enrollment_id"],
        ))
        .await?;
        m.create_index(index(
            "idx_stage_history_funnel_entered",
            StageHistory::Table,
            &["funnel_id", "entered_at"],
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(Events::Table)
                .col(big_pk_auto(Events::Id))
                .col(big_integer_null(Events::LeadId))
                .col(string(Events::Kind))
                .col(text(Events::Payload).default("{}"))
                .col(string_null(Events::IdempotencyKey))
                .col(big_integer(Events::OccurredAt))
                .col(big_integer(Events::ReceivedAt))
                .col(big_integer_null(Events::ProcessedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(Events::Table, Events::LeadId)
                        .to(Leads::Table, Leads::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        // Unique but nullable: events without a key never collide.
        m.create_index(
            index(
                "idx_events_idempotency",
                Events::Table,
                &["idempotency_key"],
            )
            .unique()
            .to_owned(),
        )
        .await?;
        m.create_index(index(
            "idx_events_lead_kind",
            Events::Table,
            &["lead_id", "kind", "occurred_at"],
        ))
        .await?;
        m.create_index(index(
            "idx_events_unprocessed",
            Events::Table,
            &["processed_at"],
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(Messages::Table)
                .col(big_pk_auto(Messages::Id))
                .col(string(Messages::Kind))
                .col(big_integer(Messages::LeadId))
                .col(big_integer_null(Messages::EnrollmentId))
                .col(string_null(Messages::FunnelId))
                .col(string_null(Messages::StageId))
                .col(string_null(Messages::StepId))
                .col(string_null(Messages::Template))
                .col(string_uniq(Messages::SendKey))
                .col(string(Messages::Recipient))
                .col(text(Messages::Payload).default("{}"))
                .col(string(Messages::Status))
                .col(integer(Messages::Attempts).default(0))
                .col(big_integer_null(Messages::NextAttemptAt))
                .col(big_integer_null(Messages::LeaseUntil))
                .col(text_null(Messages::LastError))
                .col(big_integer(Messages::CreatedAt))
                .col(big_integer_null(Messages::SentAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(Messages::Table, Messages::LeadId)
                        .to(Leads::Table, Leads::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "idx_messages_due",
            Messages::Table,
            &["status", "next_attempt_at"],
        ))
        .await?;
        m.create_index(index(
            "idx_messages_lead",
            Messages::Table,
            &["lead_id", "created_at"],
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(Suppressions::Table)
                .col(big_pk_auto(Suppressions::Id))
                .col(string(Suppressions::Email))
                .col(string(Suppressions::Scope))
                .col(string(Suppressions::Reason))
                .col(big_integer(Suppressions::CreatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            index(
                "idx_suppressions_email_scope",
                Suppressions::Table,
                &["email", "scope"],
            )
            .unique()
            .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Touches::Table)
                .col(big_pk_auto(Touches::Id))
                .col(big_integer(Touches::LeadId))
                .col(big_integer(Touches::OccurredAt))
                .col(string(Touches::Channel))
                .col(string_null(Touches::Source))
                .col(string_null(Touches::Medium))
                .col(string_null(Touches::Campaign))
                .col(string_null(Touches::Term))
                .col(string_null(Touches::Content))
                .col(text_null(Touches::Referrer))
                .col(text_null(Touches::LandingUrl))
                .col(string_null(Touches::FormId))
                .foreign_key(
                    ForeignKey::create()
                        .from(Touches::Table, Touches::LeadId)
                        .to(Leads::Table, Leads::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(index(
            "idx_touches_lead",
            Touches::Table,
            &["lead_id", "occurred_at"],
        ))
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            Touches::Table.into_iden(),
            Suppressions::Table.into_iden(),
            Messages::Table.into_iden(),
            Events::Table.into_iden(),
            StageHistory::Table.into_iden(),
            Enrollments::Table.into_iden(),
            FunnelVersions::Table.into_iden(),
            LeadTags::Table.into_iden(),
            Leads::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(t).to_owned()).await?;
        }
        Ok(())
    }
}

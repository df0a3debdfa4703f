//! sea-orm entities, one module per table. Timestamps are milliseconds since the Unix epoch
//! (UTC); JSON columns are text so SQLite and PostgreSQL store them alike.

macro_rules! no_relations {
    () => {
        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}
        impl ActiveModelBehavior for ActiveModel {}
    };
}

pub mod lead {
    use sea_orm::entity::prelude::*;

    /// Also read by position from a packed answer (`sql::select_packed`), in field order.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Deserialize)]
    #[sea_orm(table_name = "leads")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        #[sea_orm(unique)]
        pub email: String,
        pub first_name: Option<String>,
        /// JSON object of the lead's other fields.
        pub fields: String,
        pub timezone: Option<String>,
        /// pending, confirmed or unsubscribed.
        pub consent: String,
        pub score: i64,
        /// When the score last changed (decay counts from it).
        #[serde(default)]
        pub scored_at: Option<i64>,
        pub created_at: i64,
        pub updated_at: i64,
        /// The worker stepping this lead's enrollments, and until when.
        pub lease_owner: Option<String>,
        pub lease_until: Option<i64>,
    }
    no_relations!();
}

pub mod lead_tag {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "lead_tags")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub lead_id: i64,
        #[sea_orm(primary_key, auto_increment = false)]
        pub tag: String,
        pub created_at: i64,
    }
    no_relations!();
}

pub mod funnel_version {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "funnel_versions")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub funnel_id: String,
        pub version: i32,
        /// Hash of the source, so an unchanged file is not a new version.
        pub hash: String,
        pub source: String,
        pub created_at: i64,
    }
    no_relations!();
}

pub mod enrollment {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "enrollments")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub lead_id: i64,
        pub funnel_id: String,
        pub funnel_version: i32,
        pub stage_id: String,
        /// The step the lead stands at; kept by id so edited funnels resume in the right place.
        pub step_id: Option<String>,
        pub step_index: i32,
        pub status: String,
        /// The durable timer: when the scheduler must look at this enrollment again.
        pub wake_at: Option<i64>,
        pub deadline_at: Option<i64>,
        pub stage_entered_at: i64,
        /// How many times a stage was entered; part of every send key.
        pub stage_entry: i32,
        pub entered_at: i64,
        pub exited_at: Option<i64>,
        pub outcome: Option<String>,
        pub lease_owner: Option<String>,
        pub lease_until: Option<i64>,
        pub attempts: i32,
        pub updated_at: i64,
        /// The id of the last event of the lead this enrollment has consumed.
        pub events_seen: i64,
        /// Set when an event arrives for the lead; cleared by the round that feeds it.
        pub pending_at: Option<i64>,
        /// Where the lead came from when the run began (`tally::origin`).
        pub origin: Option<String>,
        /// Stages entered and milestones crossed, comma-separated (`tally::Reached`).
        pub reached: String,
    }
    no_relations!();
}

pub mod stage_history {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "stage_history")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub enrollment_id: i64,
        pub lead_id: i64,
        pub funnel_id: String,
        pub stage_id: String,
        pub entered_at: i64,
        pub exited_at: Option<i64>,
        pub exit_reason: Option<String>,
        pub next_stage_id: Option<String>,
    }
    no_relations!();
}

pub mod event {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "events")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub lead_id: Option<i64>,
        pub kind: String,
        pub payload: String,
        /// An order id for purchases: the same order posted twice is stored once.
        pub idempotency_key: Option<String>,
        pub occurred_at: i64,
        pub received_at: i64,
        pub processed_at: Option<i64>,
    }
    no_relations!();
}

pub mod message {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "messages")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        /// email or webhook.
        pub kind: String,
        pub lead_id: i64,
        pub enrollment_id: Option<i64>,
        pub funnel_id: Option<String>,
        pub stage_id: Option<String>,
        pub step_id: Option<String>,
        pub template: Option<String>,
        /// (lead, funnel version, step, occurrence): each send happens once.
        #[sea_orm(unique)]
        pub send_key: String,
        pub recipient: String,
        pub payload: String,
        pub status: String,
        pub attempts: i32,
        pub next_attempt_at: Option<i64>,
        pub lease_until: Option<i64>,
        pub last_error: Option<String>,
        pub created_at: i64,
        pub sent_at: Option<i64>,
    }
    no_relations!();
}

pub mod suppression {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "suppressions")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        /// Not the address: its [`super::super::suppression_key`] (`sha256:…`), so an erased
        /// lead's address is not kept while its wish not to be mailed is.
        pub email: String,
        /// `*` for every funnel, or one funnel's id.
        pub scope: String,
        /// unsubscribed, bounced, complained or manual.
        pub reason: String,
        pub created_at: i64,
    }
    no_relations!();
}

pub mod touch {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "touches")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub lead_id: i64,
        pub occurred_at: i64,
        pub channel: String,
        pub source: Option<String>,
        pub medium: Option<String>,
        pub campaign: Option<String>,
        pub term: Option<String>,
        pub content: Option<String>,
        pub referrer: Option<String>,
        pub landing_url: Option<String>,
        pub form_id: Option<String>,
    }
    no_relations!();
}

pub mod consent {
    use sea_orm::entity::prelude::*;

    /// One consent given or withdrawn: its proof.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "consents")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub lead_id: i64,
        /// given, confirmed or withdrawn.
        pub status: String,
        /// A form's id, or what an import names (`--consent-source`).
        pub source: Option<String>,
        /// The consent text's file, for a consent given through a form that declares one.
        pub text_version: Option<String>,
        /// The SHA-256 (hex) of that text as it was when the consent was given.
        pub text_sha256: Option<String>,
        pub ip: Option<String>,
        pub user_agent: Option<String>,
        pub recorded_at: i64,
    }
    no_relations!();
}

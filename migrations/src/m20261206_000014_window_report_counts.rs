//! Report counters by the days after a run's entry (`view` `entry+NNN`), so a funnel report
//! with a conversion window of whole days reads counters. The table is unchanged; the store
//! counts the stored rows again after this migration, which makes them for what came before.

crate::no_schema_change!();

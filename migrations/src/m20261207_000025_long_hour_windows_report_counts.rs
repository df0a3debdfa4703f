//! The hours after entry are kept up to 999 (41 days and 15 hours) instead of a week, so a
//! conversion window of whole hours past a week (`200h`) reads counters. No schema change: the
//! recount this migration asks for makes the new counters for what came before.

crate::no_schema_change!();

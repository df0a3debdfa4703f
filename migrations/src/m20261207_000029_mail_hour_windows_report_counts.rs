//! The per-email and A/B counters are kept by the hours after their run's entry too (all runs
//! together, as the funnel's are), so the per-email and A/B reports with a conversion window of
//! whole hours read counters. No schema change: the recount this migration asks for makes the
//! new counters for what came before.

crate::no_schema_change!();

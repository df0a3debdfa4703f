//! The per-email and A/B counters are kept by the hours after their run's entry too (all runs
//! together, as the funnel's are), and the calendar view of every counter by the days after
//! its run's entry (all runs together), so the per-email and A/B reports with a conversion
//! window of whole hours, and any report of all runs in the calendar view with a window of
//! whole days, read counters. No schema change: the recount this migration asks for makes the
//! new counters for what came before.

crate::no_schema_change!();

//! The per-email and A/B counters are kept by the days after their run's entry too, each
//! filed by when it happened (a click when it came, a stage when it was reached), so the
//! per-email and A/B reports with a conversion window of whole days read counters. No schema
//! change: the recount this migration asks for makes the new counters for what came before.

crate::no_schema_change!();

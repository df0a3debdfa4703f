//! Refunds in the report counters (`refund␟PRODUCT␟CURRENCY`): a `refund` event takes its
//! money off the order it gives back on. The table is unchanged; the store counts the stored
//! rows again after this migration, which counts the refunds stored before.

crate::no_schema_change!();

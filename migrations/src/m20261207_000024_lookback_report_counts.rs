//! Attribution's counters keep every lookback up to a year: each order's shares change where a
//! longer lookback takes in another touch, and those changes are counted under the days they
//! take, so a report over any lookback sums the counters up to it instead of reading the rows.
//! No schema change: the recount this migration asks for makes them for the stored orders.

crate::no_schema_change!();

//! Reports and recounts read the orders (purchases and refunds) of a range of leads; through
//! the index by lead and kind each lead's every event was visited to find them. A partial
//! index holds the orders alone, by lead and time, so a range's orders are found without the
//! clicks, opens and page views around them; every other event costs no index insert.

crate::one_index!(
    "idx_events_orders",
    "CREATE INDEX IF NOT EXISTS idx_events_orders ON events (lead_id, occurred_at) \
     WHERE kind IN ('purchase', 'refund')"
);

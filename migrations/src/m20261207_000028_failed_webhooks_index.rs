//! The dashboard's overview counts the failed webhook calls and the admin API lists them,
//! newest first; with no index that holds them, the list walked the whole outbox (every email
//! ever queued: 0.3 s at a million leads). A partial index holds the failed calls alone, by
//! id; every other message costs no index insert.

crate::one_index!(
    "idx_messages_failed_webhooks",
    "CREATE INDEX IF NOT EXISTS idx_messages_failed_webhooks ON messages (id) \
     WHERE kind = 'webhook' AND status = 'failed'"
);

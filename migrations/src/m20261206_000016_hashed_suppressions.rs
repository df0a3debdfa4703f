//! Suppressions keyed by a hash of the address instead of the address, so what is kept of an
//! erased lead (that they must not be mailed) is no longer their address. No change of
//! schema: the store rewrites the rows stored before this migration when it runs it
//! (`Store::migrate`), with the one rule that makes the key.

crate::no_schema_change!();

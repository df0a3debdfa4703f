//! The counters of conversion windows of whole days (`entry+NNN`) kept per origin too, so a
//! window sliced by source, channel, form, a kept field or the A/B variant reads counters. No
//! change to the tables: the store counts the stored rows again after this migration, which
//! makes the new counters for what came before.

crate::no_schema_change!();

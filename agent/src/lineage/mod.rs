//! The device side of lineage: the durable, hash-chained log of every
//! decision, its writer thread, forwarding to the collector, and export.

pub mod bundle;
pub mod entry;
pub mod forwarder;
pub mod store;
pub mod writer;

//! The device side of lineage: the durable log of every decision.

pub mod store;

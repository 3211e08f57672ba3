//! mctc-collector: collects device lineage over MQTT, verifies it (chain,
//! checkpoint quotes against the AK the authority's registry vouches for),
//! stores it, acknowledges it, and verifies exported bundles offline.
//!
//! - [`service`]: `run` — the MQTT edge and the worker thread that owns
//!   the store.
//! - [`admission`]: the edge's per-device rate limit and size check, before
//!   anything is decoded or queued.
//! - [`alert`]: the alert JSON and its coalescing (one per device and kind
//!   per interval).
//! - [`ingest`]: the sans-IO ingest core (messages in, receipts and alerts
//!   out; `export` of a device's bundle from the store).
//! - [`metrics`]: what `/metrics` shows.
//! - [`receipt`]: the collector's own receipt key and what it signs.
//! - [`store`]: the [`store::Store`] trait and its SQLite implementation.
//! - [`verify`]: offline verification of a lineage bundle (read with the
//!   shim's `mctc_shim::bundle::BundleReader`, the one bundle codec).
//! - [`chain`], [`checkpoint`], [`registry`]: the checks both paths share.
//!
//! `collector/README.md` documents the configuration, the storage schema,
//! the verification rules and the bundle format.
#![forbid(unsafe_code)]

pub mod admission;
pub mod alert;
pub mod chain;
pub mod checkpoint;
pub mod checkup;
pub mod cli;
pub mod config;
pub mod error;
pub mod ingest;
pub mod metrics;
pub mod receipt;
pub mod registry;
pub mod service;
pub mod store;
pub mod verify;

pub use error::Error;

//! The second worker: the fleet heartbeat, the outbox pump (controls and
//! registry records, whoever queued them) and the sweep of expired nonces
//! and challenges. It has its own store connection so a long queue of
//! evidence never delays a heartbeat.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use mctc_shim::limits::MAX_REVOKED_PER_HEARTBEAT;
use mctc_shim::topics::HEARTBEAT;

use crate::issuer::Issuer;
use crate::metrics::AuthorityMetrics;
use crate::now::Now;
use crate::outbox::{Outgoing, Publisher, broker_reply, pump};
use crate::store::{Store, StoreError};

/// How often the loop wakes.
const TICK: Duration = Duration::from_millis(50);
/// How often the outbox is polled (the CLI's changes arrive this way).
const PUMP_EVERY_MS: u64 = 250;
/// How often expired rows are deleted.
const SWEEP_EVERY_MS: u64 = 10_000;

/// What the daemon tells the housekeeper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// The broker's dynamic-security plugin answered (JSON).
    BrokerReply(Vec<u8>),
    /// Stop (and give the heartbeat lease up).
    Stop,
    /// A new broker session: announce every device's latest control again
    /// (see [`crate::store::Store::requeue_latest_controls`]).
    Reannounce,
}

/// Heartbeat settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatSettings {
    /// Who holds the lease (unique per process).
    pub holder: String,
    /// Time between heartbeats.
    pub interval_ms: u64,
    /// The heartbeat's `hb_ms`.
    pub window_ms: u32,
}

impl HeartbeatSettings {
    /// The lease lasts 1.5 intervals: the holder renews it every beat, and
    /// if it dies another instance takes over before devices (which allow
    /// three intervals) lapse.
    pub fn lease_ms(&self) -> u64 {
        self.interval_ms.saturating_mul(3) / 2
    }
}

/// The housekeeper.
#[derive(Debug)]
pub struct Housekeeper<S: Store> {
    store: S,
    issuer: Arc<Issuer>,
    heartbeat: HeartbeatSettings,
    clock: Now,
    /// Whether this instance held the lease at the last beat (for logs).
    leading: bool,
    metrics: Arc<AuthorityMetrics>,
}

impl<S: Store> Housekeeper<S> {
    /// A housekeeper on its own store connection.
    pub fn new(
        store: S,
        issuer: Arc<Issuer>,
        heartbeat: HeartbeatSettings,
        clock: Now,
    ) -> Housekeeper<S> {
        Housekeeper {
            store,
            issuer,
            heartbeat,
            clock,
            leading: false,
            metrics: Arc::default(),
        }
    }

    /// Reports leadership, heartbeat seq and outbox depth into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<AuthorityMetrics>) -> Housekeeper<S> {
        self.metrics = metrics;
        self
    }

    /// Runs until told to stop (or the sender is dropped), recording in
    /// `alive` (CLOCK_BOOTTIME ms) that it still runs.
    pub fn run(mut self, wake: &Receiver<Wake>, publisher: &dyn Publisher, alive: &AtomicU64) {
        let start = self.clock.refresh().boot_ms;
        let mut next_beat = start;
        let mut next_pump = start;
        let mut next_sweep = start;
        loop {
            let reannounce = match wake.recv_timeout(TICK) {
                Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(Wake::Reannounce) => true,
                Ok(Wake::BrokerReply(payload)) => {
                    match broker_reply(&mut self.store, &payload) {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(rows = n, "broker confirmed device rights"),
                        Err(e) => store_failed(&e, "store the broker's confirmation"),
                    }
                    false
                }
                Err(RecvTimeoutError::Timeout) => false,
            };
            let now = self.clock.refresh();
            if reannounce {
                match self.store.requeue_latest_controls(&now) {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(controls = n, "latest controls announced again");
                        next_pump = now.boot_ms;
                    }
                    Err(e) => store_failed(&e, "announce the latest controls again"),
                }
            }
            alive.store(now.boot_ms, Ordering::Relaxed);
            if now.boot_ms >= next_beat {
                self.beat(publisher, &now);
                next_beat = next_beat.saturating_add(self.heartbeat.interval_ms);
                if next_beat <= now.boot_ms {
                    next_beat = now.boot_ms.saturating_add(self.heartbeat.interval_ms);
                }
            }
            if now.boot_ms >= next_pump {
                if let Err(e) = pump(&mut self.store, &self.issuer, publisher, &now) {
                    store_failed(&e, "pump the outbox");
                }
                match self.store.outbox_depth() {
                    Ok(n) => self
                        .metrics
                        .outbox_depth
                        .set(i64::try_from(n).unwrap_or(i64::MAX)),
                    Err(e) => store_failed(&e, "count the outbox"),
                }
                next_pump = now.boot_ms.saturating_add(PUMP_EVERY_MS);
            }
            if now.boot_ms >= next_sweep {
                match self.store.sweep(&now) {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(removed = n, "expired nonces and challenges removed"),
                    Err(e) => store_failed(&e, "sweep expired nonces and challenges"),
                }
                next_sweep = now.boot_ms.saturating_add(SWEEP_EVERY_MS);
            }
        }
        if let Err(e) = self.store.release_lease(&self.heartbeat.holder) {
            tracing::warn!(error = %e, "heartbeat lease not released");
        }
    }

    fn beat(&mut self, publisher: &dyn Publisher, now: &Now) {
        // A heartbeat queued while disconnected would arrive late and still
        // count as liveness; so none is made (and no seq spent) offline.
        if !publisher.connected() {
            return;
        }
        let state = match self.store.heartbeat(
            &self.heartbeat.holder,
            self.heartbeat.lease_ms(),
            MAX_REVOKED_PER_HEARTBEAT,
            now,
        ) {
            Ok(Some(state)) => {
                if !self.leading {
                    tracing::info!(
                        seq = state.seq,
                        "heartbeat lease taken: this instance publishes the heartbeat"
                    );
                    self.leading = true;
                }
                self.metrics.heartbeat_leader.set(1);
                state
            }
            Ok(None) => {
                if self.leading {
                    tracing::info!("heartbeat lease held by another instance");
                    self.leading = false;
                }
                self.metrics.heartbeat_leader.set(0);
                return;
            }
            Err(e) => {
                store_failed(&e, "allocate the heartbeat");
                return;
            }
        };
        match self
            .issuer
            .heartbeat(&state, self.heartbeat.window_ms, now.wall_secs())
        {
            Ok(payload) => {
                tracing::debug!(seq = state.seq, epoch = state.epoch, "heartbeat");
                self.metrics.heartbeats.inc();
                self.metrics
                    .heartbeat_seq
                    .set(i64::try_from(state.seq).unwrap_or(i64::MAX));
                publisher.publish(Outgoing {
                    topic: HEARTBEAT.to_owned(),
                    payload,
                    retain: false,
                });
            }
            Err(e) => tracing::error!(seq = state.seq, error = %e, "heartbeat not signed"),
        }
    }
}

/// Logs a store failure by whose it is: a busy database is retried at the
/// next tick (warn); anything else is the database's or ours (error).
fn store_failed(error: &StoreError, doing: &'static str) {
    if error.is_transient() {
        tracing::warn!(%error, fault = error.kind(), doing, "database busy; retried at the next tick");
    } else {
        tracing::error!(%error, fault = error.kind(), doing, "database failed");
    }
}

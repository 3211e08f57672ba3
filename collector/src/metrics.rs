//! What the collector exposes on `/metrics` (`[metrics] listen`): updated
//! by the ingest core and the edge, written at scrape time. Names are a
//! contract with dashboards (`packaging/grafana/mctc-fleet.json`) and
//! documented in the README.

use mctc_service::metrics::{Counter, CounterFamily, Encoder, Gauge, Metrics, encode_build_info};

use crate::admission::Dropped;

/// What went wrong while ingesting, by owner (`Ingest::counters`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestCounters {
    /// Messages refused for what the sender got wrong: a lineage batch
    /// stopped by an anomaly (or dropped: undecodable or oversized from an
    /// unknown device), a registry record that does not verify.
    pub sender_faults: u64,
    /// Tries that failed for a transient failure of ours (a busy database,
    /// a head other writers kept moving); the message is retried.
    pub transient_failures: u64,
    /// Messages not handled for a failure of ours that does not go away by
    /// itself (corrupt, full, IO, read-only database; a broken invariant).
    pub failures: u64,
    /// Messages handled by a retry after a transient failure.
    pub retried: u64,
    /// Messages given up after its tries (3) transient failures or for
    /// want of room in the retry queue (unacked: the device resends).
    pub abandoned: u64,
}

/// The collector's metrics; one per process, shared by its threads.
#[derive(Debug, Default)]
pub struct CollectorMetrics {
    /// Lineage batches that extended a device's verified chain.
    pub batches_accepted: Counter,
    /// Records stored (verified, in order).
    pub records_accepted: Counter,
    /// Anomalies detected, by kind (`AnomalyKind::name`), repeats included.
    pub anomalies: CounterFamily,
    /// Arrival at the edge to handled by the worker, of the last message,
    /// in ms (-1 before the first): how far ingestion runs behind.
    pub ingest_lag_ms: Gauge,
    /// Device wall time to storage of the newest record of the last
    /// accepted batch, in ms (-1 before the first, or when the device did
    /// not trust its wall clock): how late lineage arrives.
    pub record_age_ms: Gauge,
    /// `IngestCounters`, mirrored after every input.
    pub sender_faults: Counter,
    pub transient_failures: Counter,
    pub failures: Counter,
    pub retried: Counter,
    pub abandoned: Counter,
    /// Lineage dropped at the edge before decoding, by reason.
    pub rate_limited: Counter,
    pub oversize: Counter,
    pub untracked: Counter,
}

impl CollectorMetrics {
    /// A fresh set, with no lag observed yet.
    pub fn new() -> CollectorMetrics {
        let m = CollectorMetrics::default();
        m.ingest_lag_ms.set(-1);
        m.record_age_ms.set(-1);
        m
    }

    /// Mirrors the ingest core's counters (totals since start).
    pub fn observe_counters(&self, c: &IngestCounters) {
        self.sender_faults.raise_to(c.sender_faults);
        self.transient_failures.raise_to(c.transient_failures);
        self.failures.raise_to(c.failures);
        self.retried.raise_to(c.retried);
        self.abandoned.raise_to(c.abandoned);
    }

    /// Mirrors the admission totals.
    pub fn observe_drops(&self, d: &Dropped) {
        self.rate_limited.raise_to(d.rate_limited);
        self.oversize.raise_to(d.oversize);
        self.untracked.raise_to(d.untracked);
    }
}

impl Metrics for CollectorMetrics {
    fn encode(&self, e: &mut Encoder) {
        e.counter(
            "mctc_collector_batches_accepted",
            "Lineage batches that extended a device's verified chain.",
            self.batches_accepted.get(),
        );
        e.counter(
            "mctc_collector_records_accepted",
            "Lineage records verified and stored.",
            self.records_accepted.get(),
        );
        e.counter_family(
            "mctc_collector_anomalies",
            "Lineage anomalies detected, by kind.",
            "kind",
            &self.anomalies,
        );
        e.gauge(
            "mctc_collector_ingest_lag_ms",
            "Arrival at the collector to handled, of the last lineage or registry message, ms (-1: none yet).",
            self.ingest_lag_ms.get(),
        );
        e.gauge(
            "mctc_collector_record_age_ms",
            "Device wall time to storage of the newest record of the last accepted batch, ms (-1: none yet or the device's wall clock untrusted).",
            self.record_age_ms.get(),
        );
        e.counter_samples(
            "mctc_collector_ingest_faults",
            "Inputs not accepted, by owner; retried and abandoned after transient failures.",
            "owner",
            &[
                ("sender", self.sender_faults.get()),
                ("transient", self.transient_failures.get()),
                ("ours", self.failures.get()),
                ("retried", self.retried.get()),
                ("abandoned", self.abandoned.get()),
            ],
        );
        e.counter_samples(
            "mctc_collector_lineage_dropped",
            "Lineage dropped at the edge before decoding, by reason.",
            "reason",
            &[
                ("rate-limited", self.rate_limited.get()),
                ("oversize", self.oversize.get()),
                ("untracked", self.untracked.get()),
            ],
        );
        encode_build_info(e, "mctc-collector", env!("CARGO_PKG_VERSION"));
    }
}

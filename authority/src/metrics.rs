//! What the authority exposes on `/metrics` (`[metrics] listen`): updated
//! where the event happens (engine, housekeeper, dispatcher), written at
//! scrape time. Names are a contract with dashboards
//! (`packaging/grafana/mctc-fleet.json`) and documented in the README.

use mctc_service::metrics::{Counter, CounterFamily, Encoder, Gauge, Metrics, encode_build_info};

/// The authority's metrics; one per process, shared by its threads.
#[derive(Debug, Default)]
pub struct AuthorityMetrics {
    /// Artifacts signed and sent.
    pub artifacts_issued: Counter,
    /// Evidence refused, by refusal name (`model::Refusal::name`).
    pub refusals: CounterFamily,
    /// Enrollment answers, by status name (`ok`, `bad-ek`, …).
    pub enrollments: CounterFamily,
    /// Devices contained automatically by a verdict.
    pub containments: Counter,
    /// Inputs dropped before the worker, by reason.
    pub inputs_dropped: CounterFamily,
    /// `EngineCounters::sender_faults`.
    pub sender_faults: Counter,
    /// `EngineCounters::transient_failures`.
    pub transient_failures: Counter,
    /// `EngineCounters::failures`.
    pub failures: Counter,
    /// 1 while this instance holds the heartbeat lease.
    pub heartbeat_leader: Gauge,
    /// The seq of the last heartbeat this instance published.
    pub heartbeat_seq: Gauge,
    /// Heartbeats this instance published.
    pub heartbeats: Counter,
    /// Rows waiting in the outbox (controls, registry records, broker
    /// rights), at the housekeeper's last poll.
    pub outbox_depth: Gauge,
}

impl Metrics for AuthorityMetrics {
    fn encode(&self, e: &mut Encoder) {
        e.counter(
            "mctc_authority_artifacts_issued",
            "Authorization artifacts issued.",
            self.artifacts_issued.get(),
        );
        e.counter_family(
            "mctc_authority_refusals",
            "Evidence refused, by reason.",
            "reason",
            &self.refusals,
        );
        e.counter_family(
            "mctc_authority_enrollments",
            "Enrollment answers, by result (ok or the refusal).",
            "result",
            &self.enrollments,
        );
        e.counter(
            "mctc_authority_containments",
            "Devices contained automatically by a verdict.",
            self.containments.get(),
        );
        e.counter_family(
            "mctc_authority_inputs_dropped",
            "Device inputs dropped before the worker, by reason.",
            "reason",
            &self.inputs_dropped,
        );
        e.counter_samples(
            "mctc_authority_engine_faults",
            "Inputs not answered, by owner: the sender's fault, a transient failure of ours, a failure of ours.",
            "owner",
            &[
                ("sender", self.sender_faults.get()),
                ("transient", self.transient_failures.get()),
                ("ours", self.failures.get()),
            ],
        );
        e.gauge(
            "mctc_authority_heartbeat_leader",
            "1 while this instance holds the heartbeat lease and publishes the heartbeat.",
            self.heartbeat_leader.get(),
        );
        e.gauge(
            "mctc_authority_heartbeat_seq",
            "Seq of the last heartbeat this instance published.",
            self.heartbeat_seq.get(),
        );
        e.counter(
            "mctc_authority_heartbeats",
            "Heartbeats this instance published.",
            self.heartbeats.get(),
        );
        e.gauge(
            "mctc_authority_outbox_depth",
            "Outbox rows waiting to be published.",
            self.outbox_depth.get(),
        );
        encode_build_info(e, "mctc-authority", env!("CARGO_PKG_VERSION"));
    }
}

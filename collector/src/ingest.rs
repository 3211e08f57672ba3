//! The ingest core, sans IO: MQTT messages in (registry records, lineage
//! batches), publications out (acks, alerts), the store in between.
//!
//! Rules (the README's "Verification rules" section is the full list):
//!
//! - A registry record counts only if it verifies with a configured
//!   authority key and names the device of its topic; a higher version
//!   replaces the stored one, a revoked device stays stored with its status
//!   (its lineage is still collected: it is the proof of what it did).
//! - A batch is bounded before it is decoded; each record extends the
//!   device's verified head only if the shim's chain verifier accepts it and,
//!   for a checkpoint, the quote verifies against the registry's AK.
//! - A record below the head is compared with the stored one: identical is a
//!   harmless resend, different is a fork. A record above the head waits in
//!   `pending` (within `pending_window`) until the hole fills; a hole that
//!   stays longer than `gap_grace_ms` is a gap.
//! - The ack is a receipt signed with the collector's own key: the highest
//!   seq of the verified chain from seq 0, its record hash, the newest
//!   verified checkpoint at or below it (a device prunes only through that)
//!   and the anomaly that stopped the batch, if any. Nothing unverified is
//!   acked; while nothing is stored the ack is unsigned and claims nothing.
//! - A batch from a device without a registry record is not acked; the last
//!   few are held in memory (bounded) and replayed when the record arrives.
//! - A store failure is ours, never the device's: nothing is acked and no
//!   anomaly is recorded or sent for it. A busy database (or a head other
//!   writers keep moving) is transient: the message is kept and retried at
//!   the next ticks (warn). Anything else (corrupt, full, IO, read-only) is
//!   logged at error level and the message dropped; the device resends what
//!   was not acked. What the device got wrong is an anomaly, counted as the
//!   sender's fault ([`IngestCounters`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use mctc_attest::verifier::AkPublic;
use mctc_shim::limits::MAX_BATCH_LEN;
use mctc_shim::lineage::{BreakKind, ChainVerifier, Record, record_hash};
use mctc_shim::messages::{LineageAck, LineageBatch};
use mctc_shim::topics::{self, DeviceTopic};
use mctc_shim::wire::Version;
use mctc_shim::{AuthorityKey, DeviceId, Message, RingCrypto};

use crate::alert::{self, ALERT_TOPIC, Coalescer, Due, Sighting};
use crate::chain::{Fault, check_next};
use crate::checkpoint::clock_regression;
use crate::metrics::CollectorMetrics;
pub use crate::metrics::IngestCounters;
use crate::receipt::{ReceiptFields, ReceiptSigner};
use crate::registry::{RegistryEntry, verify_registry};
use crate::store::{
    AnomalyKind, Changes, Head, NewAnomaly, NewCheckpoint, NewRecord, Recorded, RegistryChange,
    Store, StoreError,
};

/// How many times a batch is re-decided when another writer moved the head.
const HEAD_MOVED_RETRIES: usize = 3;
/// Held batches per unknown device at most.
const HELD_PER_DEVICE: usize = 64;
/// At most one anomaly ack per device per this many ms (`send_ack`).
const ANOMALY_ACK_GAP_MS: u64 = 1_000;
/// Messages kept for a retry after a transient store failure, at most
/// (each ≤ one batch, so ≤ 4 MiB); beyond it a message is dropped unacked
/// and the device resends it.
const RETRY_QUEUE: usize = 64;
/// Tries of one message (the first included) before it is given up: each
/// failed try already waited the busy timeout.
const RETRY_ATTEMPTS: u32 = 3;

/// A message kept for a retry after a transient store failure.
#[derive(Debug)]
enum Input {
    Message { topic: String, payload: Vec<u8> },
    Oversize { device: DeviceId, len: usize },
}

impl Input {
    fn describe(&self) -> (&str, Option<&DeviceId>) {
        match self {
            Input::Message { topic, .. } => (topic.as_str(), None),
            Input::Oversize { device, .. } => ("oversized lineage", Some(device)),
        }
    }
}

#[derive(Debug)]
struct Retry {
    input: Input,
    /// Tries so far.
    tries: u32,
}

/// Ingest tuning (the `[ingest]` section of the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestConfig {
    /// How long records may wait above a hole before it is a gap.
    pub gap_grace_ms: u64,
    /// How far above the head a record may be and still wait in `pending`.
    pub pending_window: u64,
    /// Batches held for devices without a registry record, at most.
    pub held_batches: usize,
    /// Bytes held for devices without a registry record, at most.
    pub held_bytes: usize,
    /// How long a held batch is kept.
    pub held_ttl_ms: u64,
    /// At most one alert per device and anomaly kind per this many ms.
    pub alert_interval_ms: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            gap_grace_ms: 5_000,
            pending_window: 4_096,
            held_batches: 256,
            held_bytes: 8 * 1024 * 1024,
            held_ttl_ms: 600_000,
            alert_interval_ms: 10_000,
        }
    }
}

/// A device's bundle as the collector holds it ([`Ingest::export`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// Records `0 ..= checkpoint`, each as stored.
    pub records: Vec<Vec<u8>>,
    /// The hash of the last one.
    pub head: [u8; 32],
    /// The registry record the checkpoints verified against.
    pub registry: RegistryEntry,
    /// A receipt for the last record, signed at export.
    pub receipt: Vec<u8>,
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// Whether the broker retains it.
    pub retain: bool,
}

#[derive(Debug)]
struct HeldBatch {
    device: DeviceId,
    payload: Vec<u8>,
    at_ms: u64,
}

/// Batches of devices the collector has no registry record for yet,
/// bounded in count, bytes and age; oldest dropped first.
#[derive(Debug, Default)]
struct Held {
    queue: VecDeque<HeldBatch>,
    bytes: usize,
}

impl Held {
    fn hold(&mut self, config: &IngestConfig, device: &DeviceId, payload: &[u8], now_ms: u64) {
        if payload.len() > config.held_bytes || config.held_batches == 0 {
            return;
        }
        let of_device = self.queue.iter().filter(|h| h.device == *device).count();
        if of_device >= HELD_PER_DEVICE {
            if let Some(i) = self.queue.iter().position(|h| h.device == *device) {
                self.remove(i);
            }
        }
        self.bytes = self.bytes.saturating_add(payload.len());
        self.queue.push_back(HeldBatch {
            device: device.clone(),
            payload: payload.to_vec(),
            at_ms: now_ms,
        });
        while self.bytes > config.held_bytes || self.queue.len() > config.held_batches {
            if self.remove(0).is_none() {
                break;
            }
        }
    }

    fn remove(&mut self, index: usize) -> Option<HeldBatch> {
        let held = self.queue.remove(index)?;
        self.bytes = self.bytes.saturating_sub(held.payload.len());
        Some(held)
    }

    fn take(&mut self, device: &DeviceId) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.queue.len() {
            if self.queue.get(i).is_some_and(|h| h.device == *device) {
                if let Some(held) = self.remove(i) {
                    out.push(held.payload);
                }
            } else {
                i += 1;
            }
        }
        out
    }

    fn expire(&mut self, config: &IngestConfig, now_ms: u64) {
        while self
            .queue
            .front()
            .is_some_and(|h| now_ms.saturating_sub(h.at_ms) > config.held_ttl_ms)
        {
            self.remove(0);
        }
    }
}

/// One pass over a batch for one device: the running head and everything
/// the batch will change.
struct Pass {
    device: DeviceId,
    head: Head,
    verifier: ChainVerifier,
    changes: Changes,
    new_pending: BTreeMap<u64, Vec<u8>>,
    /// The anomaly that stopped the batch.
    stopped: Option<(AnomalyKind, u64)>,
}

impl Pass {
    fn new(device: DeviceId, head: Head) -> Self {
        let verifier = match head.through_seq() {
            None => ChainVerifier::genesis(device.clone()),
            Some(last) => ChainVerifier::resume(device.clone(), last, head.hash),
        };
        Self {
            changes: Changes {
                expected_next: head.next_seq,
                ..Changes::default()
            },
            device,
            head,
            verifier,
            new_pending: BTreeMap::new(),
            stopped: None,
        }
    }

    fn note(&mut self, kind: AnomalyKind, seq: Option<u64>, detail: String, evidence: &[u8]) {
        self.changes.anomalies.push(NewAnomaly {
            kind,
            seq,
            detail,
            evidence: (!evidence.is_empty()).then(|| evidence.to_vec()),
        });
    }

    fn stop(&mut self, kind: AnomalyKind, seq: u64, detail: String, evidence: &[u8]) {
        self.note(kind, Some(seq), detail, evidence);
        self.stopped = Some((kind, seq));
    }

    /// The bytes of a record this pass already appended.
    fn appended(&self, seq: u64) -> Option<&[u8]> {
        let index = seq.checked_sub(self.changes.expected_next)?;
        let index = usize::try_from(index).ok()?;
        self.changes.records.get(index).map(|r| r.bytes.as_slice())
    }
}

fn break_kind(kind: BreakKind) -> AnomalyKind {
    match kind {
        BreakKind::Undecodable => AnomalyKind::Undecodable,
        BreakKind::WrongDevice => AnomalyKind::WrongDevice,
        BreakKind::Gap { .. } | BreakKind::Reordered { .. } => AnomalyKind::Gap,
        BreakKind::Conflict => AnomalyKind::Fork,
        BreakKind::LinkMismatch | BreakKind::HeadMismatch => AnomalyKind::LinkMismatch,
        BreakKind::BadCheckpoint => AnomalyKind::BadCheckpoint,
        BreakKind::ClockRegression => AnomalyKind::ClockRegression,
    }
}

fn short_hash(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    hex::encode(digest.as_ref().get(..8).unwrap_or_default())
}

/// The collector's ingest state machine over a [`Store`].
#[derive(Debug)]
pub struct Ingest<S: Store> {
    store: S,
    crypto: RingCrypto,
    keys: Vec<AuthorityKey>,
    config: IngestConfig,
    instance: String,
    receipts: ReceiptSigner,
    aks: HashMap<DeviceId, AkPublic>,
    held: Held,
    /// The next seq at which a gap was last flagged, per device (so a
    /// persisting gap is alerted once, not every tick).
    gaps_flagged: HashMap<DeviceId, u64>,
    /// One alert per device and kind per interval.
    alerts: Coalescer,
    /// Batch-level anomalies written recently, by (device, kind, seq):
    /// repeats within the alert interval are counted here until the next
    /// tick. Bounded by [`alert::MAX_ALERT_KEYS`] (beyond it, written
    /// through).
    recent: HashMap<(DeviceId, AnomalyKind, u64), Recent>,
    /// The last anomaly ack per device (see `send_ack`). Bounded like
    /// `recent`.
    anomaly_acked: HashMap<DeviceId, AckMemo>,
    /// Messages waiting for a retry after a transient store failure, in
    /// arrival order; bounded by [`RETRY_QUEUE`].
    retry: VecDeque<Retry>,
    counters: IngestCounters,
    metrics: Arc<CollectorMetrics>,
}

/// The last anomaly ack sent to a device.
#[derive(Debug)]
struct AckMemo {
    /// When it was sent.
    at_ms: u64,
    /// What it said: the head's next seq, the anomaly, its seq.
    said: (u64, AnomalyKind, u64),
}

/// A batch-level anomaly written at `at_ms`, and its repeats since.
#[derive(Debug)]
struct Recent {
    at_ms: u64,
    repeats: u64,
    anomaly: NewAnomaly,
}

impl<S: Store> Ingest<S> {
    /// An ingest core trusting the authority `keys` and signing its acks
    /// with `receipts`; `instance` names this collector in alerts.
    pub fn new(
        store: S,
        keys: Vec<AuthorityKey>,
        receipts: ReceiptSigner,
        config: IngestConfig,
        instance: String,
    ) -> Self {
        Self {
            store,
            crypto: RingCrypto,
            keys,
            instance,
            receipts,
            aks: HashMap::new(),
            held: Held::default(),
            gaps_flagged: HashMap::new(),
            alerts: Coalescer::new(config.alert_interval_ms),
            recent: HashMap::new(),
            anomaly_acked: HashMap::new(),
            retry: VecDeque::new(),
            counters: IngestCounters::default(),
            metrics: Arc::new(CollectorMetrics::new()),
            config,
        }
    }

    /// Counts accepted lineage, anomalies and lag into `metrics` (the
    /// daemon's `/metrics`).
    pub fn with_metrics(mut self, metrics: Arc<CollectorMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// What went wrong so far, by owner.
    pub fn counters(&self) -> IngestCounters {
        self.counters
    }

    /// Messages waiting for a retry after a transient store failure.
    pub fn retry_pending(&self) -> usize {
        self.retry.len()
    }

    /// The public key receipts are signed with.
    pub fn receipt_key(&self) -> [u8; 32] {
        mctc_shim::Signer::public_key(&self.receipts)
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Handles one MQTT message; returns what to publish. A store failure
    /// produces no ack and no anomaly: a transient one keeps the message
    /// for a retry at the next ticks, a lasting one drops it (the device
    /// resends what was not acked).
    pub fn handle(&mut self, topic: &str, payload: &[u8], now_ms: u64) -> Vec<Publish> {
        let mut out = Vec::new();
        if let Err(error) = self.on_message(topic, payload, now_ms, &mut out) {
            let input = Input::Message {
                topic: topic.to_owned(),
                payload: payload.to_vec(),
            };
            if let Some(kept) = self.failed(input, 1, &error) {
                self.retry.push_back(kept);
            }
        }
        out
    }

    /// A lineage payload the edge dropped for its size (over
    /// `MAX_BATCH_LEN`, so never a batch) without queueing its bytes:
    /// recorded and acked like any undecodable batch.
    pub fn oversized(&mut self, device: &DeviceId, len: usize, now_ms: u64) -> Vec<Publish> {
        let input = Input::Oversize {
            device: device.clone(),
            len,
        };
        let mut out = Vec::new();
        if let Err(error) = self.on_oversized(device, len, now_ms, &mut out) {
            if let Some(kept) = self.failed(input, 1, &error) {
                self.retry.push_back(kept);
            }
        }
        out
    }

    fn on_message(
        &mut self,
        topic: &str,
        payload: &[u8],
        now_ms: u64,
        out: &mut Vec<Publish>,
    ) -> Result<(), StoreError> {
        match topics::parse(topic) {
            Some((DeviceTopic::Lineage, device)) => self.on_batch(&device, payload, now_ms, out),
            Some((DeviceTopic::Registry, device)) => {
                self.on_registry(&device, payload, now_ms, out)
            }
            _ => {
                tracing::debug!(topic, "ignoring a message on an unexpected topic");
                Ok(())
            }
        }
    }

    fn run(
        &mut self,
        input: &Input,
        now_ms: u64,
        out: &mut Vec<Publish>,
    ) -> Result<(), StoreError> {
        match input {
            Input::Oversize { device, len } => self.on_oversized(device, *len, now_ms, out),
            Input::Message { topic, payload } => self.on_message(topic, payload, now_ms, out),
        }
    }

    /// Counts and logs a store failure while handling `input` (its
    /// `tries`th try): ours, never the device's. Returns it if it is to be
    /// retried: a transient failure, within [`RETRY_ATTEMPTS`] and the
    /// queue's room (warn). Otherwise it is dropped unacked (error for a
    /// lasting failure) and the device resends it.
    fn failed(&mut self, input: Input, tries: u32, error: &StoreError) -> Option<Retry> {
        let (what, device) = input.describe();
        let device = device.map(ToString::to_string);
        let fault = error.kind();
        if !error.is_transient() {
            self.counters.failures += 1;
            tracing::error!(what, device, fault, %error, "store failed; nothing acknowledged");
            return None;
        }
        self.counters.transient_failures += 1;
        if tries >= RETRY_ATTEMPTS || self.retry.len() >= RETRY_QUEUE {
            self.counters.abandoned += 1;
            tracing::warn!(what, device, fault, tries, %error, "database busy; message given up unacknowledged (the device resends it)");
            return None;
        }
        tracing::warn!(what, device, fault, tries, %error, "database busy; nothing acknowledged, retried at the next tick");
        Some(Retry { input, tries })
    }

    /// Retries the messages a transient store failure kept, in arrival
    /// order, until one fails again (the database is still busy: the rest
    /// waits for the next tick rather than each waiting the busy timeout).
    fn retry_kept(&mut self, now_ms: u64, out: &mut Vec<Publish>) {
        for _ in 0..self.retry.len() {
            let Some(Retry { input, tries }) = self.retry.pop_front() else {
                break;
            };
            let tries = tries.saturating_add(1);
            match self.run(&input, now_ms, out) {
                Ok(()) => {
                    self.counters.retried += 1;
                    tracing::debug!(
                        what = input.describe().0,
                        tries,
                        "message handled on a retry"
                    );
                }
                Err(error) => {
                    let busy = error.is_transient();
                    if let Some(kept) = self.failed(input, tries, &error) {
                        // Back to the front: arrival order is kept.
                        self.retry.push_front(kept);
                    }
                    if busy {
                        break;
                    }
                }
            }
        }
    }

    /// Periodic work: retry what a busy database kept, expire held batches,
    /// flag gaps older than the grace, send the alert summaries whose
    /// interval ended.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Publish> {
        self.held.expire(&self.config, now_ms);
        let mut out = Vec::new();
        self.retry_kept(now_ms, &mut out);
        if let Err(error) = self.flag_gaps(now_ms, &mut out) {
            if error.is_transient() {
                self.counters.transient_failures += 1;
                tracing::warn!(fault = error.kind(), %error, "database busy while looking for gaps; retried at the next tick");
            } else {
                self.counters.failures += 1;
                tracing::error!(fault = error.kind(), %error, "store failed while looking for gaps");
            }
        }
        self.flush_repeats(now_ms, &mut out);
        for due in self.alerts.tick(now_ms) {
            out.push(self.alert(&due));
        }
        out
    }

    /// Logs and builds one (coalesced) alert.
    fn alert(&self, due: &Due) -> Publish {
        let s = &due.sighting;
        tracing::warn!(
            device = %s.device,
            kind = s.kind.name(),
            seq = s.seq,
            count = due.count,
            kept = s.id.is_some(),
            detail = %s.detail,
            "lineage anomaly"
        );
        Publish {
            topic: ALERT_TOPIC.to_owned(),
            payload: due.payload(&self.instance),
            retain: true,
        }
    }

    fn on_oversized(
        &mut self,
        device: &DeviceId,
        len: usize,
        now_ms: u64,
        out: &mut Vec<Publish>,
    ) -> Result<(), StoreError> {
        // Only for a device the collector vouches for: an unknown one gets
        // nothing recorded (as for its undecodable lineage).
        if self.ak(device)?.is_none() {
            self.counters.sender_faults += 1;
            tracing::debug!(device = %device, len, "oversized lineage from an unknown device dropped");
            return Ok(());
        }
        let detail = format!("batch of {len} bytes exceeds {MAX_BATCH_LEN}");
        self.stop_batch(device, AnomalyKind::Undecodable, detail, now_ms, out)
    }

    fn on_registry(
        &mut self,
        device: &DeviceId,
        payload: &[u8],
        now_ms: u64,
        out: &mut Vec<Publish>,
    ) -> Result<(), StoreError> {
        if payload.is_empty() {
            // A cleared retained message: nothing to learn.
            return Ok(());
        }
        let (entry, ak) = match verify_registry(payload, device, &self.keys, &self.crypto) {
            Ok(verified) => verified,
            Err(error) => {
                // The authority's topic: a record that does not verify is
                // forged or misconfigured, so it is a warning, not debug.
                self.counters.sender_faults += 1;
                tracing::warn!(device = %device, %error, "registry record rejected");
                return Ok(());
            }
        };
        match self.store.put_registry(&entry, now_ms)? {
            change @ (RegistryChange::New | RegistryChange::Replaced) => {
                tracing::info!(
                    device = %device,
                    version = entry.version,
                    status = entry.status.name(),
                    new = change == RegistryChange::New,
                    "registry record accepted"
                );
                self.aks.insert(device.clone(), ak);
                for held in self.held.take(device) {
                    self.on_batch(device, &held, now_ms, out)?;
                }
            }
            RegistryChange::Unchanged => {}
            RegistryChange::Stale => {
                tracing::debug!(device = %device, version = entry.version, "older registry record ignored");
            }
        }
        Ok(())
    }

    /// The device's AK, from the cache or the store's registry record.
    fn ak(&mut self, device: &DeviceId) -> Result<Option<AkPublic>, StoreError> {
        if let Some(ak) = self.aks.get(device) {
            return Ok(Some(ak.clone()));
        }
        let Some(entry) = self.store.registry(device)? else {
            return Ok(None);
        };
        match AkPublic::parse(&entry.ak_public) {
            Ok(ak) => {
                self.aks.insert(device.clone(), ak.clone());
                Ok(Some(ak))
            }
            Err(e) => Err(StoreError::Corrupt(format!(
                "stored AK of {device} does not parse: {e}"
            ))),
        }
    }

    fn on_batch(
        &mut self,
        device: &DeviceId,
        payload: &[u8],
        now_ms: u64,
        out: &mut Vec<Publish>,
    ) -> Result<(), StoreError> {
        if payload.len() > MAX_BATCH_LEN {
            // The edge drops these before queueing; this keeps the core's
            // rule whoever calls it.
            return self.on_oversized(device, payload.len(), now_ms, out);
        }
        let known = self.ak(device)?;
        let batch = LineageBatch::decode(payload);
        let Some(ak) = known else {
            if batch.as_ref().is_ok_and(|b| b.device == *device) {
                self.held.hold(&self.config, device, payload, now_ms);
                let anomaly = NewAnomaly {
                    kind: AnomalyKind::UnknownDevice,
                    seq: None,
                    detail: "lineage from a device without a registry record (held, not acked)"
                        .to_owned(),
                    evidence: None,
                };
                self.record_anomalies(device, vec![anomaly], now_ms, out)?;
            } else {
                // Per message, so not above debug: a flood must not flood
                // the log (the edge reports drops per device and interval).
                self.counters.sender_faults += 1;
                tracing::debug!(device = %device, "undecodable lineage from an unknown device dropped");
            }
            return Ok(());
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(error) => {
                let detail = format!("batch does not decode: {error}");
                return self.stop_batch(device, AnomalyKind::Undecodable, detail, now_ms, out);
            }
        };
        if batch.device != *device {
            let detail = format!("batch names device {} on this device's topic", batch.device);
            return self.stop_batch(device, AnomalyKind::WrongDevice, detail, now_ms, out);
        }
        let records: Vec<&[u8]> = batch.records.iter().map(|b| b.as_bytes()).collect();
        let mut attempt = 0;
        loop {
            match self.ingest_records(device, &ak, &records, now_ms, out) {
                Err(StoreError::HeadMoved { .. }) if attempt < HEAD_MOVED_RETRIES => {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// A batch rejected as a whole: record the anomaly, ack the unchanged
    /// head with it. A repeat of one recorded within the alert interval
    /// (junk sent again and again at the same head) is only counted here
    /// and written at the next tick, so junk costs no transaction per
    /// message.
    fn stop_batch(
        &mut self,
        device: &DeviceId,
        kind: AnomalyKind,
        detail: String,
        now_ms: u64,
        out: &mut Vec<Publish>,
    ) -> Result<(), StoreError> {
        let head = self.store.head(device)?.unwrap_or_else(Head::genesis);
        let stopped = Some((kind, head.next_seq));
        let key = (device.clone(), kind, head.next_seq);
        let interval = self.config.alert_interval_ms;
        let mut times = 1;
        if let Some(recent) = self.recent.get_mut(&key) {
            if alert::since(now_ms, recent.at_ms) < interval {
                recent.repeats = recent.repeats.saturating_add(1);
                self.send_ack(device, &head, stopped, false, now_ms, out)?;
                self.refused(device, kind, head.next_seq);
                return Ok(());
            }
            times += std::mem::take(&mut recent.repeats);
        }
        let anomaly = NewAnomaly {
            kind,
            seq: Some(head.next_seq),
            detail,
            evidence: None,
        };
        let written = vec![anomaly.clone(); usize::try_from(times).unwrap_or(1)];
        self.record_anomalies(device, written, now_ms, out)?;
        if self.recent.len() < alert::MAX_ALERT_KEYS || self.recent.contains_key(&key) {
            self.recent.insert(
                key,
                Recent {
                    at_ms: now_ms,
                    repeats: 0,
                    anomaly,
                },
            );
        }
        self.send_ack(device, &head, stopped, false, now_ms, out)?;
        self.refused(device, kind, head.next_seq);
        Ok(())
    }

    /// Counts a batch refused for what the device sent, once the store
    /// recorded it (a store failure on the way is ours, and the batch is
    /// retried or resent: counted once it goes through). Per message, so
    /// debug: the anomaly itself is alerted, coalesced.
    fn refused(&mut self, device: &DeviceId, kind: AnomalyKind, seq: u64) {
        self.counters.sender_faults += 1;
        tracing::debug!(device = %device, kind = kind.name(), seq, "lineage batch refused");
    }

    /// Queues an ack. One that carries an anomaly is rationed per device:
    /// at most one a second, and the same one (head, anomaly, seq) at most
    /// once per alert interval. An agent resends everything it has not had
    /// acknowledged on every anomaly ack, so answering each junk message a
    /// device's key holder publishes would turn it into a resend storm
    /// (amplification). A rationed ack still reports progress, without the
    /// anomaly, when the batch extended the chain (`progressed`).
    fn send_ack(
        &mut self,
        device: &DeviceId,
        head: &Head,
        anomaly: Option<(AnomalyKind, u64)>,
        progressed: bool,
        now_ms: u64,
        out: &mut Vec<Publish>,
    ) -> Result<(), StoreError> {
        let Some((kind, seq)) = anomaly else {
            out.extend(self.ack(device, head, None, now_ms)?);
            return Ok(());
        };
        let said = (head.next_seq, kind, seq);
        let interval = self.config.alert_interval_ms;
        let rationed = self.anomaly_acked.get(device).is_some_and(|memo| {
            let since = alert::since(now_ms, memo.at_ms);
            since < ANOMALY_ACK_GAP_MS || (memo.said == said && since < interval)
        });
        if rationed {
            tracing::debug!(device = %device, kind = kind.name(), seq, "anomaly ack rationed");
            if progressed {
                out.extend(self.ack(device, head, None, now_ms)?);
            }
            return Ok(());
        }
        if self.anomaly_acked.len() < alert::MAX_ALERT_KEYS
            || self.anomaly_acked.contains_key(device)
        {
            self.anomaly_acked.insert(
                device.clone(),
                AckMemo {
                    at_ms: now_ms,
                    said,
                },
            );
        }
        out.extend(self.ack(device, head, anomaly, now_ms)?);
        Ok(())
    }

    /// Writes the repeats counted since the last tick; forgets quiet keys.
    fn flush_repeats(&mut self, now_ms: u64, out: &mut Vec<Publish>) {
        let interval = self.config.alert_interval_ms;
        let waiting: Vec<_> = self
            .recent
            .iter_mut()
            .filter(|(_, r)| r.repeats > 0)
            .map(|((device, _, _), r)| {
                let times = usize::try_from(std::mem::take(&mut r.repeats)).unwrap_or(1);
                (device.clone(), vec![r.anomaly.clone(); times])
            })
            .collect();
        for (device, anomalies) in waiting {
            if let Err(error) = self.record_anomalies(&device, anomalies, now_ms, out) {
                if error.is_transient() {
                    self.counters.transient_failures += 1;
                    tracing::warn!(device = %device, fault = error.kind(), %error, "database busy; repeated anomalies not counted");
                } else {
                    self.counters.failures += 1;
                    tracing::error!(device = %device, fault = error.kind(), %error, "store failed; repeated anomalies not counted");
                }
            }
        }
        self.recent
            .retain(|_, r| alert::since(now_ms, r.at_ms) < interval);
        self.anomaly_acked
            .retain(|_, memo| alert::since(now_ms, memo.at_ms) < interval);
    }

    fn record_anomalies(
        &mut self,
        device: &DeviceId,
        anomalies: Vec<NewAnomaly>,
        now_ms: u64,
        out: &mut Vec<Publish>,
    ) -> Result<(), StoreError> {
        let expected_next = self.store.head(device)?.map_or(0, |h| h.next_seq);
        let changes = Changes {
            expected_next,
            anomalies,
            ..Changes::default()
        };
        let recorded = self.store.apply(device, &changes, now_ms)?;
        self.publish_alerts(device, &changes, &recorded, now_ms, out);
        Ok(())
    }

    /// Offers every new anomaly (kept or beyond the bound) to the
    /// coalescer; repeats of a kept one only raised its count.
    fn publish_alerts(
        &mut self,
        device: &DeviceId,
        changes: &Changes,
        recorded: &[Recorded],
        now_ms: u64,
        out: &mut Vec<Publish>,
    ) {
        for new in &changes.anomalies {
            self.metrics.anomalies.inc(new.kind.name());
        }
        for (new, recorded) in changes.anomalies.iter().zip(recorded) {
            let sighting = match recorded {
                Recorded::New(row) => Sighting {
                    id: Some(row.id),
                    device: row.device.clone(),
                    kind: row.kind,
                    seq: row.seq,
                    detail: row.detail.clone(),
                    evidence_sha256: row.evidence_sha256.clone(),
                    first_seen_ms: row.first_seen_ms,
                },
                Recorded::Overflow(overflow) => Sighting {
                    id: None,
                    device: device.as_str().to_owned(),
                    kind: new.kind,
                    seq: new.seq,
                    detail: format!(
                        "{} (not kept: {} of this kind beyond the per-device bound)",
                        new.detail, overflow.count
                    ),
                    evidence_sha256: String::new(),
                    first_seen_ms: now_ms,
                },
                Recorded::Repeat => {
                    tracing::debug!(
                        device = %device,
                        kind = new.kind.name(),
                        seq = new.seq,
                        "lineage anomaly seen again"
                    );
                    continue;
                }
            };
            match self.alerts.offer(sighting, now_ms) {
                Some(due) => out.push(self.alert(&due)),
                None => tracing::debug!(
                    device = %device,
                    kind = new.kind.name(),
                    seq = new.seq,
                    "lineage anomaly (alert coalesced)"
                ),
            }
        }
    }

    /// The ack for `head` (the stored head, after this batch's changes).
    /// Once anything is stored it is a signed receipt for the verified chain
    /// `0 ..= head` naming the newest verified checkpoint in it, so a device
    /// prunes only what a verified checkpoint covers. Before that it is the
    /// unsigned `LineageAck`, which carries only an anomaly and on which a
    /// device prunes nothing.
    fn ack(
        &self,
        device: &DeviceId,
        head: &Head,
        anomaly: Option<(AnomalyKind, u64)>,
        now_ms: u64,
    ) -> Result<Option<Publish>, StoreError> {
        let code = anomaly.and_then(|(kind, seq)| kind.ack_code().map(|code| (code, seq)));
        let topic = DeviceTopic::LineageAck.topic(device).as_str().to_owned();
        let Some(seq) = head.through_seq() else {
            let ack = LineageAck {
                v: Version::CURRENT,
                device: device.clone(),
                through_seq: None,
                anomaly: code.map(|(c, _)| c),
                at_seq: code.map(|(_, seq)| seq),
            };
            let mut buf = [0u8; 256];
            return Ok(match ack.encode(&mut buf) {
                Ok(bytes) => Some(Publish {
                    topic,
                    payload: bytes.to_vec(),
                    retain: false,
                }),
                Err(error) => {
                    // An ack of a valid device id and integers always fits
                    // 256 bytes; without one the device resends later.
                    tracing::error!(device = %device, %error, "could not encode an ack");
                    None
                }
            });
        };
        let fields = ReceiptFields {
            device,
            seq,
            hash: head.hash,
            checkpoint: self.store.latest_checkpoint(device, seq)?,
            anomaly: code,
        };
        Ok(self.receipts.sign(&fields, now_ms).map(|payload| Publish {
            topic,
            payload,
            retain: false,
        }))
    }

    /// What `mctc-collector export` writes: the stored chain from seq 0
    /// through the newest verified checkpoint, with a receipt for that
    /// checkpoint signed now, and the registry record. `None` while no
    /// checkpoint of the device is verified (nothing a bundle could end at).
    pub fn export(&self, device: &DeviceId, now_ms: u64) -> Result<Option<Export>, StoreError> {
        let Some(head) = self.store.head(device)? else {
            return Ok(None);
        };
        let Some(through) = head.through_seq() else {
            return Ok(None);
        };
        let Some(checkpoint) = self.store.latest_checkpoint(device, through)? else {
            return Ok(None);
        };
        let Some(registry) = self.store.registry(device)? else {
            return Ok(None);
        };
        let records = self.store.records_range(device, 0, checkpoint)?;
        let expected = checkpoint
            .checked_add(1)
            .and_then(|n| usize::try_from(n).ok());
        let (Some(last), true) = (records.last(), Some(records.len()) == expected) else {
            return Err(StoreError::Corrupt(format!(
                "{device}: records 0..={checkpoint} are not all stored"
            )));
        };
        let hash = record_hash(&self.crypto, last);
        let fields = ReceiptFields {
            device,
            seq: checkpoint,
            hash,
            checkpoint: Some(checkpoint),
            anomaly: None,
        };
        let Some(receipt) = self.receipts.sign(&fields, now_ms) else {
            return Err(StoreError::Corrupt(format!(
                "{device}: the receipt does not encode"
            )));
        };
        Ok(Some(Export {
            records,
            head: hash,
            registry,
            receipt,
        }))
    }

    fn ingest_records(
        &mut self,
        device: &DeviceId,
        ak: &AkPublic,
        records: &[&[u8]],
        now_ms: u64,
        out: &mut Vec<Publish>,
    ) -> Result<(), StoreError> {
        let head = self.store.head(device)?.unwrap_or_else(Head::genesis);
        let mut pass = Pass::new(device.clone(), head);
        for bytes in records {
            self.offer(&mut pass, ak, bytes)?;
            if pass.stopped.is_some() {
                break;
            }
        }
        if pass.stopped.is_none() {
            self.drain_pending(&mut pass, ak)?;
        }
        pass.changes.pending_add = std::mem::take(&mut pass.new_pending).into_iter().collect();
        if pass.head.next_seq != pass.changes.expected_next {
            pass.changes.head = Some(pass.head.clone());
        }
        let recorded = self.store.apply(device, &pass.changes, now_ms)?;
        if let Some(newest) = pass.changes.records.last() {
            self.metrics.batches_accepted.inc();
            self.metrics
                .records_accepted
                .add(pass.changes.records.len() as u64);
            let lag = newest.wall_ms.map_or(-1, |wall| {
                i64::try_from(now_ms.saturating_sub(wall)).unwrap_or(i64::MAX)
            });
            self.metrics.record_age_ms.set(lag);
        }
        self.publish_alerts(device, &pass.changes, &recorded, now_ms, out);
        // One line per batch, whether it extended the chain or was held
        // back until an earlier batch (maybe at another instance) lands.
        tracing::debug!(
            device = %device,
            appended = pass.changes.records.len(),
            held = pass.changes.pending_add.len(),
            through = pass.head.through_seq(),
            stopped = pass.stopped.map(|(kind, _)| kind.name()),
            "lineage batch handled"
        );
        let head = pass.head.clone();
        let progressed = !pass.changes.records.is_empty();
        self.send_ack(device, &head, pass.stopped, progressed, now_ms, out)?;
        // A sweep (no records) that stops on a waiting record: nothing the
        // device just sent.
        if let Some((kind, seq)) = pass.stopped
            && !records.is_empty()
        {
            self.refused(device, kind, seq);
        }
        Ok(())
    }

    /// Offers one record of a batch.
    fn offer(&self, pass: &mut Pass, ak: &AkPublic, bytes: &[u8]) -> Result<(), StoreError> {
        let next = pass.head.next_seq;
        let record = match Record::decode(bytes) {
            Ok(record) => record,
            Err(error) => {
                let detail = format!("record does not decode: {error}");
                pass.stop(AnomalyKind::Undecodable, next, detail, bytes);
                return Ok(());
            }
        };
        if record.device != pass.device {
            let detail = format!("record names device {}", record.device);
            pass.stop(AnomalyKind::WrongDevice, next, detail, bytes);
            return Ok(());
        }
        let seq = record.seq;
        if seq < next {
            let stored = match pass.appended(seq) {
                Some(bytes) => Some(bytes.to_vec()),
                None => self.store.record(&pass.device, seq)?,
            };
            match stored {
                Some(stored) if stored == bytes => {}
                Some(stored) => {
                    let detail = format!(
                        "record {seq} differs from the stored one (stored {}, received {})",
                        short_hash(&stored),
                        short_hash(bytes)
                    );
                    pass.stop(AnomalyKind::Fork, seq, detail, bytes);
                }
                None => {
                    return Err(StoreError::Corrupt(format!(
                        "{}: head is at {next} but record {seq} is missing",
                        pass.device
                    )));
                }
            }
            return Ok(());
        }
        if seq > next {
            let ahead = seq - next;
            if ahead >= self.config.pending_window {
                let detail = format!(
                    "record {seq} is {ahead} records ahead of the verified head; records from {next} are missing"
                );
                pass.stop(AnomalyKind::Gap, next, detail, bytes);
                return Ok(());
            }
            let existing = match pass.new_pending.get(&seq) {
                Some(bytes) => Some(bytes.clone()),
                None => self.store.pending(&pass.device, seq)?,
            };
            match existing {
                Some(existing) if existing == bytes => {}
                Some(existing) => {
                    let detail = format!(
                        "two different records {seq} received (first {}, then {})",
                        short_hash(&existing),
                        short_hash(bytes)
                    );
                    pass.stop(AnomalyKind::Fork, seq, detail, bytes);
                }
                None => {
                    pass.new_pending.insert(seq, bytes.to_vec());
                }
            }
            return Ok(());
        }
        self.extend(pass, ak, &record, bytes)
    }

    /// Extends the chain with the record at the head's next seq.
    fn extend(
        &self,
        pass: &mut Pass,
        ak: &AkPublic,
        record: &Record<'_>,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let seq = record.seq;
        // The shim's verifier starts each batch fresh from the stored head,
        // so the stored head's stamp carries the time checks across batches.
        if let Some(last) = pass.head.last_boot {
            if last == record.boot && record.mono_ms < pass.head.last_mono_ms {
                let detail = format!(
                    "mono_ms went back from {} to {} within one boot",
                    pass.head.last_mono_ms, record.mono_ms
                );
                pass.stop(AnomalyKind::ClockRegression, seq, detail, bytes);
                return Ok(());
            }
            if (record.boot.reset, record.boot.restart) < (last.reset, last.restart) {
                let detail = format!(
                    "boot counters went back from {}/{} to {}/{}",
                    last.reset, last.restart, record.boot.reset, record.boot.restart
                );
                pass.note(AnomalyKind::BootRegression, Some(seq), detail, bytes);
            }
        }
        let checked = match check_next(&mut pass.verifier, &self.crypto, &pass.device, ak, bytes) {
            Ok(checked) => checked,
            Err(Fault::Duplicate { .. }) => return Ok(()),
            Err(Fault::Chain(b)) => {
                pass.stop(break_kind(b.kind), b.seq, Fault::Chain(b).detail(), bytes);
                return Ok(());
            }
            Err(fault @ Fault::Quote { .. }) => {
                pass.stop(AnomalyKind::BadCheckpoint, seq, fault.detail(), bytes);
                return Ok(());
            }
        };
        if let Some(cp) = &checked.checkpoint {
            if let Some(earlier) = &pass.head.last_quote_clock {
                if let Some(detail) = clock_regression(earlier, &cp.clock) {
                    pass.note(AnomalyKind::BootRegression, Some(seq), detail, bytes);
                }
            }
            pass.changes.checkpoints.push(NewCheckpoint {
                seq,
                committed_seq: seq.saturating_sub(1),
                clock: cp.clock,
                pcr_digest: cp.pcr_digest.clone(),
            });
            pass.head.last_quote_clock = Some(cp.clock);
        }
        // A record that also waits in pending with other bytes: the device
        // sent two versions of this seq. The one that chains is kept.
        let pending = match pass.new_pending.remove(&seq) {
            Some(bytes) => Some(bytes),
            None => self.store.pending(&pass.device, seq)?,
        };
        if let Some(other) = pending.filter(|p| p != bytes) {
            let detail = format!(
                "two different records {seq} received; kept the one that chains ({}), not {}",
                short_hash(bytes),
                short_hash(&other)
            );
            pass.note(AnomalyKind::Fork, Some(seq), detail, &other);
        }
        pass.changes.records.push(NewRecord {
            seq,
            hash: checked.hash,
            kind: record.body.kind().code(),
            boot: record.boot,
            mono_ms: record.mono_ms,
            wall_ms: record.wall_ms,
            bytes: bytes.to_vec(),
        });
        pass.head.next_seq = seq.saturating_add(1);
        pass.head.hash = checked.hash;
        pass.head.last_boot = Some(record.boot);
        pass.head.last_mono_ms = record.mono_ms;
        Ok(())
    }

    /// Extends the chain with pending records that now follow the head.
    fn drain_pending(&self, pass: &mut Pass, ak: &AkPublic) -> Result<(), StoreError> {
        loop {
            let seq = pass.head.next_seq;
            let bytes = match pass.new_pending.remove(&seq) {
                Some(bytes) => bytes,
                None => match self.store.pending(&pass.device, seq)? {
                    Some(bytes) => {
                        pass.changes.pending_remove.push(seq);
                        bytes
                    }
                    None => return Ok(()),
                },
            };
            match Record::decode(&bytes) {
                Ok(record) => self.extend(pass, ak, &record, &bytes)?,
                Err(error) => {
                    let detail = format!("record does not decode: {error}");
                    pass.stop(AnomalyKind::Undecodable, seq, detail, &bytes);
                }
            }
            if pass.stopped.is_some() {
                // The failing pending record is dropped, so a correct resend
                // can take its place.
                pass.changes.pending_remove.push(seq);
                return Ok(());
            }
            if pass.head.next_seq == seq {
                // Nothing appended (cannot happen for a record filed under
                // its own seq, but never loop on it).
                return Ok(());
            }
        }
    }

    fn flag_gaps(&mut self, now_ms: u64, out: &mut Vec<Publish>) -> Result<(), StoreError> {
        for summary in self.store.pending_summary()? {
            if now_ms.saturating_sub(summary.oldest_ms) < self.config.gap_grace_ms {
                continue;
            }
            let Ok(device) = DeviceId::new(&summary.device) else {
                continue;
            };
            let head = self.store.head(&device)?.unwrap_or_else(Head::genesis);
            if summary.lowest_seq <= head.next_seq {
                // No hole: the records that follow the head were left
                // waiting (another instance filled the hole after this one
                // looked) or are stale. A pass without new records drains
                // or drops them, and acks.
                if let Some(ak) = self.ak(&device)? {
                    self.ingest_records(&device, &ak, &[], now_ms, out)?;
                }
                continue;
            }
            if self.gaps_flagged.get(&device) == Some(&head.next_seq) {
                continue;
            }
            self.gaps_flagged.insert(device.clone(), head.next_seq);
            let detail = format!(
                "records {}..{} missing; {} later records waiting",
                head.next_seq,
                summary.lowest_seq.saturating_sub(1),
                summary.count
            );
            let anomaly = NewAnomaly {
                kind: AnomalyKind::Gap,
                seq: Some(head.next_seq),
                detail,
                evidence: None,
            };
            self.record_anomalies(&device, vec![anomaly], now_ms, out)?;
            self.send_ack(
                &device,
                &head,
                Some((AnomalyKind::Gap, head.next_seq)),
                false,
                now_ms,
                out,
            )?;
        }
        Ok(())
    }
}

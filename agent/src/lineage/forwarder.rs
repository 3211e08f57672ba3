//! Store-and-forward of lineage to the collector.
//!
//! Durable records (below the writer's `next_seq`) are read back from the
//! segment files and sent as [`LineageBatch`]es (≤ 64 records, ≤ 64 KiB,
//! QoS 1) on `dev/{id}/lineage`, at most `window` batches ahead of the last
//! acknowledgement. The collector answers on `dev/{id}/lineage/ack` with a
//! signed receipt ([`mctc_shim::Receipt`]): the verified chain it holds
//! through `seq`, the hash of record `seq`, and the newest checkpoint it
//! verified in it.
//!
//! Delivery is the application's job (rumqttc cannot match a PUBACK to its
//! publish, and a new clean session loses what was in flight): after every
//! reconnect, after an anomaly report, and whenever no ack arrived for
//! `resend_after`, sending starts again from the last acknowledged seq.
//! Resends are idempotent at the collector (same seq, same bytes).
//!
//! A receipt counts only if, in this order: it is signed by a configured
//! collector receipt key for this device (shim [`verify_receipt`]); its
//! `seq` is not below the kept receipt's (else a replay); `seq` is a record
//! this agent has sent (in this run, or durable at its start, when an
//! earlier run may have sent it); the agent's own record at `seq` hashes to
//! the receipt's `hash`; and the agent's record at `checkpoint` is a
//! checkpoint. Anything else changes nothing, is counted and logged (at
//! most one line per [`LOG_EVERY`] per reason). The anyone-can-publish
//! unsigned `LineageAck` (sent by a collector that holds nothing of the
//! device yet) only triggers a resend.
//!
//! The latest accepted receipt is persisted (`state_dir/lineage-receipt`,
//! at most once a second and at stop) and only then are segments pruned,
//! and only through the persisted receipt's `checkpoint`: nothing is pruned
//! that a verified checkpoint the collector holds does not cover, and the
//! receipt an export carries always covers what was pruned.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use mctc_service::link::QoS;
use mctc_shim::limits::{MAX_BATCH_LEN, MAX_BATCH_RECORDS, MAX_RECORD_LEN};
use mctc_shim::lineage::{Body, Record, record_hash};
use mctc_shim::messages::{AckAnomaly, LineageAck, LineageBatch};
use mctc_shim::topics::DeviceTopic;
use mctc_shim::wire::{Bstr, List, Message, Version};
use mctc_shim::{CollectorKey, DeviceId, RingCrypto, verify_receipt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::store::{Cursor, Frame, StoreError, read_range, read_range_at};
use super::writer::LineageHandle;
use crate::outbox::Outbox;
use crate::state::StateDir;

/// Record bytes per batch, leaving room for the batch's own encoding and
/// one record past the budget (`read_range` stops after crossing it).
const BATCH_PAYLOAD_BYTES: usize = MAX_BATCH_LEN - 4 * 1024;
/// The latest receipt is persisted (and pruning follows it) at most this
/// often; losing an unpersisted one only means resending and pruning later.
const PERSIST_EVERY: Duration = Duration::from_secs(1);
/// Batch-end hashes remembered for checking receipts (beyond: a disk read).
const SENT_HASHES: usize = 4096;
/// At most one log line per rejection reason this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What the router hands the forwarder.
#[derive(Debug)]
pub enum ForwarderInput {
    Connected,
    Disconnected,
    Ack(Vec<u8>),
}

/// For status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardStatus {
    /// The seq of the latest accepted receipt (the collector's verified
    /// head when it signed).
    pub acked: Option<u64>,
    pub sent: Option<u64>,
    pub anomaly: Option<String>,
    /// The checkpoint of the persisted receipt: lineage is pruned through it.
    pub pruned_through: Option<u64>,
    /// Receipts that changed nothing: forged, foreign, replayed, for a seq
    /// not sent or a record that differs.
    pub rejected_receipts: u64,
}

#[derive(Debug, Clone)]
pub struct ForwarderSettings {
    pub window: usize,
    pub resend_after: Duration,
    /// The collectors' receipt keys.
    pub receipt_keys: Vec<CollectorKey>,
}

/// A receipt this agent accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Kept {
    seq: u64,
    hash: [u8; 32],
    checkpoint: Option<u64>,
    bytes: Vec<u8>,
}

/// A receipt that passed every check.
#[derive(Debug)]
struct Checked {
    /// `None`: the kept receipt again.
    kept: Option<Kept>,
    /// The collector's anomaly report, and where.
    anomaly: Option<(AckAnomaly, Option<u64>)>,
}

/// Why a receipt changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptRejection {
    /// Not signed by a configured collector key, not a receipt, not for
    /// this device, or malformed.
    #[error("does not verify: {0}")]
    Unverified(mctc_shim::Error),
    /// Older than the receipt already kept (a replay or a late duplicate).
    #[error("seq {seq} is below the kept receipt's {kept} (replay)")]
    Stale { seq: u64, kept: u64 },
    /// For a seq this agent has not sent.
    #[error("seq {seq} was never sent (highest sent: {sent:?})")]
    NotSent { seq: u64, sent: Option<u64> },
    /// The agent's own record at `seq` is not the one the receipt names.
    #[error("record {seq} differs from the one the receipt names")]
    HashMismatch { seq: u64 },
    /// The named checkpoint is not a checkpoint in the agent's log.
    #[error("record {seq} named as the checkpoint is not one")]
    NotACheckpoint { seq: u64 },
}

/// Why a receipt was not taken: the collector's fault (a rejection), or
/// ours (the agent's own log could not be read to check it against).
#[derive(Debug, thiserror::Error)]
enum Unchecked {
    #[error(transparent)]
    Rejected(#[from] ReceiptRejection),
    /// Not the collector's fault, so not counted as a rejected receipt:
    /// logged at error level with the store's failure class; the receipt
    /// is checked again when the collector next acks.
    #[error("record {seq} could not be read: {cause}")]
    Unreadable { seq: u64, cause: ReadFailure },
}

/// Why the agent could not read its own record.
#[derive(Debug, thiserror::Error)]
pub enum ReadFailure {
    /// The log does not hold it.
    #[error("not on disk")]
    Missing,
    /// The log could not be read.
    #[error(transparent)]
    Store(StoreError),
    /// The blocking reader task died.
    #[error("reader task: {0}")]
    Task(tokio::task::JoinError),
}

impl ReceiptRejection {
    fn reason(&self) -> &'static str {
        match self {
            Self::Unverified(_) => "unverified",
            Self::Stale { .. } => "stale",
            Self::NotSent { .. } => "not-sent",
            Self::HashMismatch { .. } => "hash-mismatch",
            Self::NotACheckpoint { .. } => "not-a-checkpoint",
        }
    }
}

/// One log line per reason per [`LOG_EVERY`], with the count suppressed.
#[derive(Debug, Default)]
struct RateLimitedLog {
    last: std::collections::HashMap<&'static str, (Instant, u64)>,
}

impl RateLimitedLog {
    fn rejected(&mut self, rejection: &ReceiptRejection, total: u64) {
        let reason = rejection.reason();
        let now = Instant::now();
        let entry = self.last.entry(reason).or_insert((now, 0));
        let first = entry.1 == 0 && entry.0 == now;
        if first || now.duration_since(entry.0) >= LOG_EVERY {
            let suppressed = entry.1;
            *entry = (now, 0);
            if matches!(rejection, ReceiptRejection::Stale { .. }) {
                tracing::info!(reason, %rejection, suppressed, total, "lineage receipt ignored");
            } else {
                tracing::warn!(reason, %rejection, suppressed, total, "lineage receipt rejected; nothing pruned");
            }
        } else {
            entry.1 += 1;
        }
    }

    /// A receipt the agent could not check against its own log: ours, so
    /// error level, and not counted among the collector's rejections.
    fn unreadable(&mut self, seq: u64, cause: &ReadFailure, total: u64) {
        let now = Instant::now();
        let entry = self.last.entry("unreadable").or_insert((now, 0));
        let first = entry.1 == 0 && entry.0 == now;
        if first || now.duration_since(entry.0) >= LOG_EVERY {
            let suppressed = entry.1;
            *entry = (now, 0);
            let class = match cause {
                ReadFailure::Store(e) => e.class().name(),
                ReadFailure::Missing => "missing",
                ReadFailure::Task(_) => "bug",
            };
            tracing::error!(seq, %cause, class, suppressed, total, "lineage receipt not checked: the local log could not be read; nothing pruned");
        } else {
            entry.1 += 1;
        }
    }
}

#[derive(Debug)]
pub struct Forwarder<O: Outbox> {
    device: DeviceId,
    topic: String,
    dir: PathBuf,
    outbox: O,
    lineage: LineageHandle,
    state: StateDir,
    settings: ForwarderSettings,
    /// Flow control: the seq of the latest accepted receipt, at most what
    /// was sent.
    acked: Option<u64>,
    /// The latest accepted receipt.
    kept: Option<Kept>,
    /// The receipt last written to `state_dir` (pruning follows it).
    persisted: Option<Kept>,
    last_persist: Option<Instant>,
    /// Records durable when this run started: an earlier run may have sent
    /// any of them.
    sent_before: Option<u64>,
    rejected: u64,
    /// Receipts not checked because the local log could not be read.
    unreadable: u64,
    log: RateLimitedLog,
    /// First seq not yet sent in this round.
    next_send: u64,
    /// Highest seq ever sent: acks above it are not believed.
    sent_high: Option<u64>,
    /// Last seq of each batch in flight.
    in_flight: VecDeque<u64>,
    /// The hash of the last record of each batch sent and not yet covered
    /// by the kept receipt: a receipt names the collector's head, which is
    /// almost always the end of a batch, so its check needs no disk read.
    sent_hashes: std::collections::BTreeMap<u64, [u8; 32]>,
    /// Where the last read stopped: the next read continues there when it
    /// starts at `next_send` (a resend starts over from the segment).
    cursor: Option<Cursor>,
    last_progress: Instant,
    connected: bool,
    status: watch::Sender<ForwardStatus>,
}

impl<O: Outbox> Forwarder<O> {
    pub fn new(
        device: DeviceId,
        dir: PathBuf,
        outbox: O,
        lineage: LineageHandle,
        state: StateDir,
        settings: ForwarderSettings,
    ) -> (Forwarder<O>, watch::Receiver<ForwardStatus>) {
        let kept = state.lineage_receipt().and_then(|bytes| {
            match verify_receipt(&bytes, &settings.receipt_keys, &RingCrypto, &device) {
                Ok(v) => {
                    let r = v.receipt();
                    Some(Kept {
                        seq: r.seq,
                        hash: r.hash.0,
                        checkpoint: r.checkpoint,
                        bytes: bytes.clone(),
                    })
                }
                Err(error) => {
                    // A rotated-out collector key or a damaged file: start
                    // without one (resend everything, prune nothing until
                    // the next receipt).
                    tracing::warn!(%error, "the stored lineage receipt does not verify; ignored");
                    None
                }
            }
        });
        let acked = kept.as_ref().map(|k| k.seq);
        let sent_before = lineage.current().next_seq.checked_sub(1);
        let (status, rx) = watch::channel(ForwardStatus {
            acked,
            pruned_through: kept.as_ref().and_then(|k| k.checkpoint),
            ..ForwardStatus::default()
        });
        let topic = DeviceTopic::Lineage.topic(&device).as_str().to_owned();
        let forwarder = Forwarder {
            device,
            topic,
            dir,
            outbox,
            lineage,
            state,
            settings,
            acked,
            persisted: kept.clone(),
            kept,
            last_persist: None,
            sent_before,
            rejected: 0,
            unreadable: 0,
            log: RateLimitedLog::default(),
            next_send: 0,
            cursor: None,
            sent_high: None,
            in_flight: VecDeque::new(),
            sent_hashes: std::collections::BTreeMap::new(),
            last_progress: Instant::now(),
            connected: false,
            status,
        };
        (forwarder, rx)
    }

    /// Runs until `inputs` closes; persists the acknowledged seq on the way
    /// out.
    pub async fn run(mut self, mut inputs: mpsc::Receiver<ForwarderInput>) {
        let mut durable = self.lineage.status();
        self.check_stored_receipt().await;
        // What the persisted receipt covers may not have been pruned yet
        // (a stop between persisting and pruning).
        if let Some(through) = self.persisted.as_ref().and_then(|k| k.checkpoint) {
            self.lineage.prune(through);
        }
        self.restart_round();
        loop {
            let resend_at = self.last_progress + self.settings.resend_after;
            let waiting = !self.in_flight.is_empty() && self.connected;
            let unpersisted = self.persisted != self.kept;
            let persist_at = self
                .last_persist
                .map_or_else(Instant::now, |at| at + PERSIST_EVERY);
            tokio::select! {
                input = inputs.recv() => match input {
                    Some(ForwarderInput::Connected) => {
                        self.connected = true;
                        self.restart_round();
                    }
                    Some(ForwarderInput::Disconnected) => self.connected = false,
                    Some(ForwarderInput::Ack(bytes)) => self.on_ack(&bytes).await,
                    None => break,
                },
                changed = durable.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                () = tokio::time::sleep_until(persist_at), if unpersisted => self.persist(false),
                () = tokio::time::sleep_until(resend_at), if waiting => {
                    tracing::info!(from = ?self.acked.map(|a| a + 1), "no lineage ack; resending");
                    self.restart_round();
                }
            }
            self.pump().await;
        }
        self.persist(true);
    }

    /// The stored receipt must be about this log: its record is on disk
    /// with its hash, or already pruned. A receipt of another chain (the
    /// lineage directory was moved aside to start anew) would otherwise
    /// skip and prune records no collector has.
    async fn check_stored_receipt(&mut self) {
        let Some(kept) = self.kept.clone() else {
            return;
        };
        let current = self.lineage.current();
        let pruned = current.first_seq.is_some_and(|first| kept.seq < first);
        let matches = pruned
            || (kept.seq < current.next_seq
                && self
                    .read_record(kept.seq)
                    .await
                    .is_ok_and(|own| record_hash(&RingCrypto, &own) == kept.hash));
        if !matches {
            tracing::warn!(
                seq = kept.seq,
                "the stored lineage receipt is not about this log; ignored"
            );
            self.kept = None;
            self.persisted = None;
            self.acked = None;
            self.status.send_modify(|s| {
                s.acked = None;
                s.pruned_through = None;
            });
        }
    }

    fn restart_round(&mut self) {
        let first = self.lineage.current().first_seq.unwrap_or(0);
        self.next_send = self.acked.map_or(first, |a| a.saturating_add(1)).max(first);
        self.in_flight.clear();
        self.last_progress = Instant::now();
    }

    /// Sends batches while connected, within the window, up to the durable
    /// end.
    async fn pump(&mut self) {
        'read: while self.connected && self.in_flight.len() < self.settings.window {
            let end = self.lineage.current().next_seq;
            if self.next_send >= end {
                break;
            }
            // One read for every batch the window has room for, continuing
            // where the last read stopped.
            let room = self.settings.window - self.in_flight.len();
            let from = self.next_send;
            let dir = self.dir.clone();
            let hint = self.cursor;
            let frames = match tokio::task::spawn_blocking(move || {
                read_range_at(
                    &dir,
                    from,
                    end,
                    MAX_BATCH_RECORDS * room,
                    BATCH_PAYLOAD_BYTES * room,
                    hint,
                )
            })
            .await
            {
                Ok(Ok((frames, cursor))) => {
                    self.cursor = cursor;
                    frames
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, from, "lineage read for forwarding failed");
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "lineage read task failed");
                    break;
                }
            };
            if frames.is_empty() {
                // Pruned under us or not readable yet: wait for the next
                // change.
                break;
            }
            if frames.first().map(|f| f.seq) != Some(from) {
                tracing::error!(from, "lineage records missing on disk; cannot forward them");
                break;
            }
            for batch in batches(&frames) {
                let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
                    continue;
                };
                let (first, last) = (first.seq, last.seq);
                let Some(payload) = self.encode(batch) else {
                    break 'read;
                };
                if !self
                    .outbox
                    .publish(&self.topic, payload, QoS::AtLeastOnce, false)
                    .await
                {
                    break 'read;
                }
                tracing::debug!(first, last, "lineage batch sent");
                if let Some(frame) = batch.last() {
                    self.sent_hashes
                        .insert(last, record_hash(&RingCrypto, &frame.payload));
                    while self.sent_hashes.len() > SENT_HASHES {
                        self.sent_hashes.pop_first();
                    }
                }
                self.next_send = last + 1;
                self.sent_high = Some(self.sent_high.map_or(last, |h| h.max(last)));
                self.in_flight.push_back(last);
            }
            self.publish_status();
        }
    }

    fn encode(&self, frames: &[Frame]) -> Option<Vec<u8>> {
        let mut records: List<Bstr<'_, { mctc_shim::limits::MAX_RECORD_LEN }>, MAX_BATCH_RECORDS> =
            List::new();
        for frame in frames {
            if records.push(Bstr(&frame.payload)).is_err() {
                break;
            }
        }
        let batch = LineageBatch {
            v: Version::CURRENT,
            device: self.device.clone(),
            records,
        };
        let mut buf = vec![0u8; MAX_BATCH_LEN];
        match batch.encode(&mut buf) {
            Ok(bytes) => Some(bytes.to_vec()),
            Err(e) => {
                tracing::error!(error = %e, "lineage batch does not encode");
                None
            }
        }
    }

    async fn on_ack(&mut self, bytes: &[u8]) {
        // A COSE_Sign1 starts with tag 18; anything else is the unsigned
        // ack of a collector that holds nothing of this device yet.
        if bytes.first() != Some(&0xd2) {
            self.on_unsigned_ack(bytes);
            return;
        }
        match self.check_receipt(bytes).await {
            Ok(Checked { kept, anomaly }) => {
                // `None`: the kept receipt again (a duplicate delivery):
                // nothing new, but it still reports the collector's anomaly.
                if let Some(kept) = kept {
                    self.accept(kept);
                }
                if let Some((anomaly, at_seq)) = anomaly {
                    self.report_anomaly(anomaly, at_seq, true);
                }
            }
            Err(Unchecked::Rejected(rejection)) => {
                self.rejected += 1;
                self.log.rejected(&rejection, self.rejected);
                let rejected = self.rejected;
                self.status.send_modify(|s| s.rejected_receipts = rejected);
            }
            Err(Unchecked::Unreadable { seq, cause }) => {
                self.unreadable += 1;
                self.log.unreadable(seq, &cause, self.unreadable);
            }
        }
    }

    /// An unsigned ack proves nothing (the device's own broker identity
    /// may publish on the ack topic): at most it makes the agent resend.
    fn on_unsigned_ack(&mut self, bytes: &[u8]) {
        let ack = match LineageAck::decode(bytes) {
            Ok(ack) => ack,
            Err(e) => {
                tracing::warn!(error = %e, "lineage ack dropped: does not decode");
                return;
            }
        };
        if ack.device != self.device {
            tracing::warn!(device = %ack.device, "lineage ack for another device dropped");
            return;
        }
        if let Some(anomaly) = ack.anomaly {
            self.report_anomaly(anomaly, ack.at_seq, false);
        }
    }

    /// `signed`: from a verified receipt; an unsigned report is shown as
    /// such (anyone with the device's broker key could have sent it).
    fn report_anomaly(&mut self, anomaly: AckAnomaly, at_seq: Option<u64>, signed: bool) {
        let source = if signed { "" } else { " (unsigned ack)" };
        let text = format!("{} at seq {:?}{source}", anomaly.name(), at_seq);
        tracing::error!(anomaly = %text, "collector reports a lineage anomaly");
        self.status.send_modify(|s| s.anomaly = Some(text));
        // Whatever the collector lacks is resent; records are kept.
        self.restart_round();
    }

    /// Every check of a receipt; `kept: None` for the kept receipt's seq
    /// and hash again.
    async fn check_receipt(&self, bytes: &[u8]) -> Result<Checked, Unchecked> {
        let verified = verify_receipt(
            bytes,
            &self.settings.receipt_keys,
            &RingCrypto,
            &self.device,
        )
        .map_err(ReceiptRejection::Unverified)?;
        let r = verified.receipt();
        let (seq, hash, checkpoint) = (r.seq, r.hash.0, r.checkpoint);
        let anomaly = r.anomaly.map(|a| (a, r.at_seq));
        if let Some(kept) = &self.kept {
            if seq < kept.seq || (seq == kept.seq && hash == kept.hash) {
                return if seq == kept.seq {
                    Ok(Checked {
                        kept: None,
                        anomaly,
                    })
                } else {
                    Err(ReceiptRejection::Stale {
                        seq,
                        kept: kept.seq,
                    }
                    .into())
                };
            }
        }
        let sent = match (self.sent_high, self.sent_before) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if sent.is_none_or(|sent| seq > sent) {
            return Err(ReceiptRejection::NotSent { seq, sent }.into());
        }
        let own_hash = match self.sent_hashes.get(&seq) {
            Some(hash) => *hash,
            None => {
                let own = self.read_record(seq).await?;
                record_hash(&RingCrypto, &own)
            }
        };
        if own_hash != hash {
            return Err(ReceiptRejection::HashMismatch { seq }.into());
        }
        if let Some(c) = checkpoint {
            // A checkpoint an earlier accepted receipt named was checked
            // then (and may be pruned since); a new one is read back once.
            let checked = [self.kept.as_ref(), self.persisted.as_ref()]
                .into_iter()
                .flatten()
                .filter_map(|k| k.checkpoint)
                .any(|p| c <= p);
            if !checked {
                let own = self.read_record(c).await?;
                let is_checkpoint = Record::decode(&own)
                    .is_ok_and(|record| matches!(record.body, Body::Checkpoint(_)));
                if !is_checkpoint {
                    return Err(ReceiptRejection::NotACheckpoint { seq: c }.into());
                }
            }
        }
        Ok(Checked {
            kept: Some(Kept {
                seq,
                hash,
                checkpoint,
                bytes: bytes.to_vec(),
            }),
            anomaly,
        })
    }

    async fn read_record(&self, seq: u64) -> Result<Vec<u8>, Unchecked> {
        let dir = self.dir.clone();
        let end = seq.saturating_add(1);
        let read =
            tokio::task::spawn_blocking(move || read_range(&dir, seq, end, 1, MAX_RECORD_LEN))
                .await;
        let unreadable = |cause| Unchecked::Unreadable { seq, cause };
        match read {
            Ok(Ok(frames)) => frames
                .into_iter()
                .find(|f| f.seq == seq)
                .map(|f| f.payload)
                .ok_or(unreadable(ReadFailure::Missing)),
            Ok(Err(e)) => Err(unreadable(ReadFailure::Store(e))),
            Err(e) => Err(unreadable(ReadFailure::Task(e))),
        }
    }

    fn accept(&mut self, kept: Kept) {
        let through = kept.seq;
        tracing::debug!(seq = through, checkpoint = ?kept.checkpoint, "lineage receipt accepted");
        self.kept = Some(kept);
        self.sent_hashes = self.sent_hashes.split_off(&through.saturating_add(1));
        self.sent_high = Some(self.sent_high.map_or(through, |h| h.max(through)));
        if self.acked.is_none_or(|a| through > a) {
            self.acked = Some(through);
            self.last_progress = Instant::now();
        }
        while self.in_flight.front().is_some_and(|last| *last <= through) {
            self.in_flight.pop_front();
        }
        if self.next_send <= through {
            self.next_send = through + 1;
        }
        self.persist(false);
        self.publish_status();
    }

    /// Persists the kept receipt (if due) and then prunes through its
    /// checkpoint: a receipt is on disk before anything it covers is gone.
    fn persist(&mut self, force: bool) {
        let Some(kept) = self.kept.clone() else {
            return;
        };
        if self.persisted.as_ref() == Some(&kept) {
            return;
        }
        let due = self
            .last_persist
            .is_none_or(|at| at.elapsed() >= PERSIST_EVERY);
        if !force && !due {
            return;
        }
        match self.state.set_lineage_receipt(&kept.bytes) {
            Ok(()) => {
                self.last_persist = Some(Instant::now());
                if let Some(through) = kept.checkpoint {
                    self.lineage.prune(through);
                }
                self.status
                    .send_modify(|s| s.pruned_through = kept.checkpoint);
                self.persisted = Some(kept);
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not persist the lineage receipt; nothing pruned");
            }
        }
    }

    fn publish_status(&self) {
        let acked = self.acked;
        let sent = self.sent_high;
        self.status.send_if_modified(|s| {
            if s.acked == acked && s.sent == sent {
                false
            } else {
                s.acked = acked;
                s.sent = sent;
                true
            }
        });
    }
}

/// Consecutive frames cut into batches of at most 64 records and about
/// [`BATCH_PAYLOAD_BYTES`] of record bytes (one record may cross it; the
/// budget leaves room for that).
fn batches(frames: &[Frame]) -> Vec<&[Frame]> {
    let mut out = Vec::new();
    let mut rest = frames;
    while !rest.is_empty() {
        let mut bytes = 0usize;
        let mut take = 0usize;
        for frame in rest.iter().take(MAX_BATCH_RECORDS) {
            if take > 0 && bytes + frame.payload.len() > BATCH_PAYLOAD_BYTES {
                break;
            }
            bytes += frame.payload.len();
            take += 1;
        }
        let (batch, tail) = rest.split_at(take.max(1).min(rest.len()));
        out.push(batch);
        rest = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use mctc_shim::receipt::Receipt;
    use mctc_shim::wire::Bytes;
    use mctc_shim::{RingSigner, Signer};

    use super::*;

    #[derive(Debug, Clone)]
    struct Nowhere;

    impl Outbox for Nowhere {
        fn try_publish(&self, _: &str, _: Vec<u8>, _: QoS, _: bool) -> bool {
            true
        }

        async fn publish(&self, _: &str, _: Vec<u8>, _: QoS, _: bool) -> bool {
            true
        }
    }

    fn receipt(signer: &RingSigner, device: &DeviceId, seq: u64) -> Vec<u8> {
        let receipt = Receipt {
            v: Version::CURRENT,
            device: device.clone(),
            seq,
            hash: Bytes([7; 32]),
            time_ms: 1,
            checkpoint: None,
            anomaly: None,
            at_seq: None,
            log_checkpoint: None,
            inclusion_proof: None,
        };
        let mut buf = [0u8; 2048];
        receipt
            .sign(signer, &RingCrypto, &mut buf)
            .unwrap()
            .to_vec()
    }

    /// A receipt the agent cannot check against its own log (here the log
    /// directory is gone) is the agent's failure: not counted among the
    /// collector's rejected receipts, and it is not accepted either. A
    /// forged one is the collector's side and is counted.
    #[tokio::test]
    async fn a_receipt_our_log_cannot_check_is_ours_not_a_rejection() {
        let dir = tempfile::tempdir().unwrap();
        let device = DeviceId::new("d1").unwrap();
        let collector = RingSigner::from_seed(&[3; 32]).unwrap();
        let (lineage, _commands, writer) = LineageHandle::fake();
        // Five records are durable: an earlier run may have sent them.
        writer.send_modify(|s| s.next_seq = 5);
        let (mut forwarder, status) = Forwarder::new(
            device.clone(),
            dir.path().join("lineage-gone"),
            Nowhere,
            lineage,
            StateDir::open(&dir.path().join("state")).unwrap(),
            ForwarderSettings {
                window: 8,
                resend_after: Duration::from_secs(60),
                receipt_keys: vec![CollectorKey::new(&RingCrypto, collector.public_key())],
            },
        );
        let checked = forwarder
            .check_receipt(&receipt(&collector, &device, 3))
            .await;
        assert!(
            matches!(
                &checked,
                Err(Unchecked::Unreadable { seq: 3, cause: ReadFailure::Store(e) })
                    if e.class() == super::super::store::FailureClass::Io
            ),
            "{checked:?}"
        );
        forwarder.on_ack(&receipt(&collector, &device, 3)).await;
        assert_eq!(forwarder.unreadable, 1);
        assert_eq!(status.borrow().rejected_receipts, 0);
        assert_eq!(status.borrow().acked, None, "nothing accepted");

        let forger = RingSigner::from_seed(&[4; 32]).unwrap();
        forwarder.on_ack(&receipt(&forger, &device, 3)).await;
        assert_eq!(status.borrow().rejected_receipts, 1);
        assert_eq!(forwarder.unreadable, 1);
    }

    #[test]
    fn batches_respect_count_and_bytes_and_keep_order() {
        let frames: Vec<Frame> = (0..200)
            .map(|seq| Frame {
                seq,
                payload: vec![0; if seq == 70 { 2000 } else { 900 }],
            })
            .collect();
        let cut = batches(&frames);
        let mut next = 0;
        for batch in &cut {
            assert!(!batch.is_empty() && batch.len() <= MAX_BATCH_RECORDS);
            let bytes: usize = batch.iter().map(|f| f.payload.len()).sum();
            assert!(bytes <= BATCH_PAYLOAD_BYTES, "{bytes}");
            for frame in *batch {
                assert_eq!(frame.seq, next);
                next += 1;
            }
        }
        assert_eq!(next, 200);
        assert!(batches(&[]).is_empty());
    }
}

//! Store-and-forward of lineage to the collector.
//!
//! Durable records (below the writer's `next_seq`) are read back from the
//! segment files and sent as [`LineageBatch`]es (≤ 64 records, ≤ 64 KiB,
//! QoS 1) on `dev/{id}/lineage`, at most `window` batches ahead of the last
//! acknowledgement. The collector answers on `dev/{id}/lineage/ack` with
//! the highest seq through which it holds a verified chain; the agent then
//! persists that seq and lets the writer prune fully acknowledged
//! segments.
//!
//! Delivery is the application's job (rumqttc cannot match a PUBACK to its
//! publish, and a new clean session loses what was in flight): after every
//! reconnect, after an anomaly report, and whenever no ack arrived for
//! `resend_after`, sending starts again from the last acknowledged seq.
//! Resends are idempotent at the collector (same seq, same bytes).
//!
//! Acks are not signed, so an ack is believed only up to the highest seq
//! this agent process actually sent: a forged ack can never get unsent
//! records pruned. An ack beyond that (the collector already holds records
//! sent before a restart) is believed up to what was sent, so the resend
//! after a restart still makes progress batch by batch.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use mctc_service::link::QoS;
use mctc_shim::DeviceId;
use mctc_shim::limits::{MAX_BATCH_LEN, MAX_BATCH_RECORDS};
use mctc_shim::messages::{AckAnomaly, LineageAck, LineageBatch};
use mctc_shim::topics::DeviceTopic;
use mctc_shim::wire::{Bstr, List, Message, Version};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::store::{Cursor, Frame, read_range_at};
use super::writer::LineageHandle;
use crate::outbox::Outbox;
use crate::state::StateDir;

/// Record bytes per batch, leaving room for the batch's own encoding and
/// one record past the budget (`read_range` stops after crossing it).
const BATCH_PAYLOAD_BYTES: usize = MAX_BATCH_LEN - 4 * 1024;
/// The acknowledged seq is persisted at most this often (losing it only
/// means resending; the collector deduplicates).
const PERSIST_EVERY: Duration = Duration::from_secs(1);

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
    pub acked: Option<u64>,
    pub sent: Option<u64>,
    pub anomaly: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ForwarderSettings {
    pub window: usize,
    pub resend_after: Duration,
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
    acked: Option<u64>,
    persisted: Option<u64>,
    last_persist: Option<Instant>,
    /// First seq not yet sent in this round.
    next_send: u64,
    /// Highest seq ever sent: acks above it are not believed.
    sent_high: Option<u64>,
    /// Last seq of each batch in flight.
    in_flight: VecDeque<u64>,
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
        let acked = state.lineage_acked();
        let (status, rx) = watch::channel(ForwardStatus {
            acked,
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
            persisted: acked,
            last_persist: None,
            next_send: 0,
            cursor: None,
            sent_high: None,
            in_flight: VecDeque::new(),
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
        self.restart_round();
        loop {
            let resend_at = self.last_progress + self.settings.resend_after;
            let waiting = !self.in_flight.is_empty() && self.connected;
            let unpersisted = self.persisted != self.acked;
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
                    Some(ForwarderInput::Ack(bytes)) => self.on_ack(&bytes),
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

    fn on_ack(&mut self, bytes: &[u8]) {
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
            let text = format!("{} at seq {:?}", anomaly_name(anomaly), ack.at_seq);
            tracing::error!(anomaly = %text, "collector reports a lineage anomaly");
            self.status.send_modify(|s| s.anomaly = Some(text));
            // Whatever the collector lacks is resent; records are kept.
            self.restart_round();
        }
        let Some(claimed) = ack.through_seq else {
            return;
        };
        let Some(sent_high) = self.sent_high else {
            tracing::debug!(claimed, "lineage ack before anything was sent; ignored");
            return;
        };
        if claimed > sent_high {
            // Normal after a restart (the collector holds what an earlier
            // run sent); a forged ack gets no further than this either.
            tracing::debug!(
                claimed,
                sent_high,
                "lineage ack beyond what was sent; believed up to it"
            );
        }
        let through = claimed.min(sent_high);
        if self.acked.is_some_and(|a| through <= a) {
            return;
        }
        self.acked = Some(through);
        self.last_progress = Instant::now();
        while self.in_flight.front().is_some_and(|last| *last <= through) {
            self.in_flight.pop_front();
        }
        if self.next_send <= through {
            self.next_send = through + 1;
        }
        self.lineage.prune(through);
        self.persist(false);
        self.publish_status();
    }

    fn persist(&mut self, force: bool) {
        let Some(acked) = self.acked else {
            return;
        };
        if self.persisted == Some(acked) {
            return;
        }
        let due = self
            .last_persist
            .is_none_or(|at| at.elapsed() >= PERSIST_EVERY);
        if !force && !due {
            return;
        }
        match self.state.set_lineage_acked(acked) {
            Ok(()) => {
                self.persisted = Some(acked);
                self.last_persist = Some(Instant::now());
            }
            Err(e) => tracing::warn!(error = %e, "could not persist the lineage ack"),
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

fn anomaly_name(anomaly: AckAnomaly) -> &'static str {
    match anomaly {
        AckAnomaly::Undecodable => "undecodable record",
        AckAnomaly::WrongDevice => "record of another device",
        AckAnomaly::Gap => "gap",
        AckAnomaly::Reordered => "reordered",
        AckAnomaly::Conflict => "conflict",
        AckAnomaly::LinkMismatch => "link mismatch",
        AckAnomaly::BadCheckpoint => "bad checkpoint",
        AckAnomaly::ClockRegression => "clock regression",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

//! The lineage writer: one thread owns the [`Store`] and the chain head.
//!
//! Requests arrive on a channel in decision order. The writer takes
//! everything pending as one batch (group commit: one write and one
//! fdatasync for all of it), numbers and links each record with the shim's
//! [`ChainHead`], appends, and only then answers each request with its seq.
//! A permit is answered to the gate's client only after that answer, so
//! every permit anyone saw is on disk.
//!
//! When the previous batch was bigger than what is pending now, requests are
//! evidently on their way (the clients the previous batch answered are
//! asking again): the writer keeps the batch open for at most
//! `commit_window` until as many have arrived. A lone client never waits.
//!
//! Failure policy (fail closed, nothing dropped):
//! - quota reached: records that could open the gate or permit something
//!   are refused; records of the gate closing and the agent stopping use the
//!   reserve. Health says `QuotaReached` until acknowledged segments are
//!   pruned.
//! - a write or fdatasync error: the store refuses everything (never
//!   retried as if it had succeeded); health says `Failed`. Every
//!   [`RECOVER_RETRY`] the writer asks the store to recover — cut off what
//!   the failed write left and prove the disk takes a batch again (a full
//!   disk got room, a read-only file system became writable) — and then
//!   continues the chain from the last acknowledged record; health says
//!   `Ok` and the gate may reopen through a new attestation.
//! - the store could not be opened (corruption): health says `Failed` with
//!   the report; nothing is written.
//!
//! Checkpoints: after `checkpoint_every_records` records, after
//! `checkpoint_every` if anything was written, after every gate transition,
//! on request, and at stop. The TPM quote is taken while the chain is
//! held, so the checkpoint record directly follows the record it commits
//! to.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mctc_shim::DeviceId;
use mctc_shim::crypto::RingCrypto;
use mctc_shim::limits::MAX_RECORD_LEN;
use mctc_shim::lineage::{Body, ChainHead, Record, Stamp, record_hash};
use mctc_shim::wire::Message;
use tokio::sync::{oneshot, watch};

use super::entry::Entry;
use super::store::{FailureClass, Priority, Recovery, Store, StoreError};
use crate::clock::{Clock, CurrentBoot};
use crate::error::AgentError;
use crate::platform::PlatformError;

/// Most records written with one fdatasync.
const MAX_BATCH_ENTRIES: usize = 1024;
/// Encoded bytes per store append (below the store's torn-tail bound).
const CHUNK_BYTES: usize = 192 * 1024;
/// After a failed checkpoint quote, the next try waits this long (a TPM
/// that is gone must not stall every batch).
const CHECKPOINT_RETRY: Duration = Duration::from_secs(10);
/// After a failed write, the store is asked to recover this often.
pub const RECOVER_RETRY: Duration = Duration::from_secs(1);

/// Why a record was not written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refused {
    #[error("lineage quota reached")]
    Quota,
    /// The lineage is failed (health `failed`): nothing is written until
    /// the store recovers.
    #[error("lineage unavailable: {0}")]
    Failed(Failure),
    /// The checkpoint's TPM quote failed; the records stay durable and
    /// chained, and the checkpoint is tried again later.
    #[error("lineage unavailable: checkpoint quote: {0}")]
    Quote(Arc<PlatformError>),
    #[error("record does not encode: {0}")]
    Encode(mctc_shim::Error),
    /// The store refused the frame as the format cannot hold it.
    #[error("record does not encode: {0}")]
    Frame(StoreError),
    #[error("nothing to checkpoint")]
    Empty,
    #[error("lineage writer stopped")]
    Stopped,
}

impl Refused {
    /// The lineage failure class behind the refusal, if it is one (not for
    /// a failed quote, an empty checkpoint or a stopped writer).
    pub fn class(&self) -> Option<FailureClass> {
        match self {
            Refused::Quota => Some(FailureClass::Quota),
            Refused::Failed(failure) => Some(failure.class()),
            Refused::Encode(_) => Some(FailureClass::Bug),
            Refused::Frame(e) => Some(e.class()),
            Refused::Quote(_) | Refused::Empty | Refused::Stopped => None,
        }
    }
}

/// Why the lineage accepts nothing (health `failed`). Kept typed, not
/// flattened: its class (a full disk, a read-only one, an IO error,
/// corruption) reaches the log line, and every request it refuses shares it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Failure {
    /// The store failed: IO at open or at a write, corruption at open.
    #[error(transparent)]
    Store(StoreError),
    /// The store opened, but its last record cannot be continued from.
    #[error(transparent)]
    Resume(ResumeError),
    /// No store to write to (its open failed; reported as `Store` then).
    #[error("no store")]
    NoStore,
}

impl Failure {
    /// What kind of failure.
    pub fn class(&self) -> FailureClass {
        match self {
            Failure::Store(e) => e.class(),
            Failure::Resume(_) => FailureClass::Corrupt,
            Failure::NoStore => FailureClass::Bug,
        }
    }
}

/// Two failures are the same if they would be reported the same (class and
/// message): what decides whether the status changed.
impl PartialEq for Failure {
    fn eq(&self, other: &Self) -> bool {
        self.class() == other.class() && self.to_string() == other.to_string()
    }
}

impl Eq for Failure {}

/// Why the chain cannot continue from the last intact record on disk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    #[error("last record (seq {seq}) does not decode: {error}")]
    Undecodable { seq: u64, error: mctc_shim::Error },
    #[error("the lineage in this state directory belongs to device {found}, not {expected}")]
    OtherDevice {
        found: Box<DeviceId>,
        expected: Box<DeviceId>,
    },
    #[error("frame seq {frame} holds record seq {record}")]
    SeqMismatch { frame: u64, record: u64 },
}

/// The answer to an append: the record's seq once durable.
pub type Reply = oneshot::Sender<Result<u64, Refused>>;

/// What the writer is asked to do.
#[derive(Debug)]
pub enum Command {
    Append {
        entry: Entry,
        reply: Option<Reply>,
    },
    /// The collector acknowledged everything through this seq.
    Prune {
        through: u64,
    },
    /// Take a checkpoint now (if anything was written since the last).
    Checkpoint {
        reply: Option<Reply>,
    },
    /// Write a final checkpoint, answer, and end.
    Stop {
        reply: oneshot::Sender<()>,
    },
}

/// Whether records can be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ok,
    QuotaReached,
    Failed(Failure),
}

impl Health {
    pub fn is_ok(&self) -> bool {
        matches!(self, Health::Ok)
    }
}

/// What the writer reports after every batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineageStatus {
    pub health: Health,
    /// The first seq not yet durable: every record below it is on disk.
    pub next_seq: u64,
    /// Oldest seq still on disk.
    pub first_seq: Option<u64>,
    pub used_bytes: u64,
    pub quota_bytes: u64,
    pub last_checkpoint: Option<u64>,
    /// Store appends (= fdatasyncs) and records since start.
    pub syncs: u64,
    pub records: u64,
}

/// Takes the checkpoint quote. Production: the attest worker over the
/// attestation PCRs; tests: a real swtpm or a stand-in.
pub trait Quoter: Send + 'static {
    /// `TPM2_Quote` with `qualifying_data`; returns the raw `TPMS_ATTEST`
    /// and the marshalled `TPMT_SIGNATURE`.
    fn quote(
        &mut self,
        qualifying_data: [u8; 32],
    ) -> Result<(Vec<u8>, Vec<u8>), crate::platform::PlatformError>;
}

/// Writer tuning.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub commit_window: Duration,
    pub checkpoint_every_records: u64,
    pub checkpoint_every: Duration,
}

/// The cloneable way to the writer.
#[derive(Debug, Clone)]
pub struct LineageHandle {
    tx: mpsc::Sender<Command>,
    status: watch::Receiver<LineageStatus>,
}

impl LineageHandle {
    /// Queues `entry`; the receiver answers once it is durable (or not).
    pub fn append(&self, entry: Entry) -> oneshot::Receiver<Result<u64, Refused>> {
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::SendError(Command::Append {
            reply: Some(reply), ..
        })) = self.tx.send(Command::Append {
            entry,
            reply: Some(reply),
        }) {
            let _ = reply.send(Err(Refused::Stopped));
        }
        answer
    }

    /// Queues `entry` without waiting for it (its failure shows in health).
    pub fn record(&self, entry: Entry) {
        let _ = self.tx.send(Command::Append { entry, reply: None });
    }

    pub fn prune(&self, through: u64) {
        let _ = self.tx.send(Command::Prune { through });
    }

    /// Asks for a checkpoint; answers with its seq (or the last one if
    /// nothing was written since).
    pub fn checkpoint(&self) -> oneshot::Receiver<Result<u64, Refused>> {
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::SendError(Command::Checkpoint { reply: Some(reply) })) =
            self.tx.send(Command::Checkpoint { reply: Some(reply) })
        {
            let _ = reply.send(Err(Refused::Stopped));
        }
        answer
    }

    /// Final checkpoint, then the writer ends (everything queued before is
    /// written first).
    pub async fn stop(&self) {
        let (reply, done) = oneshot::channel();
        if self.tx.send(Command::Stop { reply }).is_ok() {
            let _ = done.await;
        }
    }

    pub fn status(&self) -> watch::Receiver<LineageStatus> {
        self.status.clone()
    }

    pub fn current(&self) -> LineageStatus {
        self.status.borrow().clone()
    }
}

#[cfg(test)]
impl LineageHandle {
    /// A handle on no writer, for paused-time tests of its users: the test
    /// holds the command queue (nothing is answered unless it answers) and
    /// sets the health. Unlike the real writer thread, nothing here runs
    /// while paused time advances.
    pub(crate) fn fake() -> (
        LineageHandle,
        mpsc::Receiver<Command>,
        watch::Sender<LineageStatus>,
    ) {
        let (tx, rx) = mpsc::channel();
        let (status_tx, status) = watch::channel(LineageStatus {
            health: Health::Ok,
            next_seq: 0,
            first_seq: None,
            used_bytes: 0,
            quota_bytes: u64::MAX,
            last_checkpoint: None,
            syncs: 0,
            records: 0,
        });
        (LineageHandle { tx, status }, rx, status_tx)
    }
}

/// What the writer starts from.
#[derive(Debug)]
pub struct WriterStart {
    pub store: Result<(Store, Recovery), StoreError>,
    pub device: DeviceId,
    pub clock: Arc<dyn Clock>,
    pub boot: CurrentBoot,
    pub quoter: Box<dyn Quoter>,
    pub settings: WriterSettings,
}

impl std::fmt::Debug for dyn Quoter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Quoter")
    }
}

/// Starts the writer thread.
pub fn spawn(
    start: WriterStart,
) -> Result<(LineageHandle, std::thread::JoinHandle<()>), AgentError> {
    let (writer, status) = Writer::new(start);
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("mctc-lineage".into())
        .spawn(move || writer.run(&rx))
        .map_err(|source| AgentError::Thread {
            what: "the lineage writer",
            source,
        })?;
    Ok((LineageHandle { tx, status }, thread))
}

#[derive(Default)]
struct Batch {
    commands: Vec<Command>,
    appends: usize,
    stop: bool,
}

impl Batch {
    fn push(&mut self, command: Command) {
        self.appends += usize::from(matches!(command, Command::Append { .. }));
        self.stop |= matches!(command, Command::Stop { .. });
        self.commands.push(command);
    }
}

struct Writer {
    store: Option<Store>,
    chain: ChainHead,
    crypto: RingCrypto,
    clock: Arc<dyn Clock>,
    boot: CurrentBoot,
    quoter: Box<dyn Quoter>,
    settings: WriterSettings,
    status: watch::Sender<LineageStatus>,
    health: Health,
    since_checkpoint: u64,
    last_checkpoint: Option<u64>,
    last_checkpoint_at: Instant,
    checkpoint_wanted: bool,
    checkpoint_retry_at: Option<Instant>,
    /// When to try the failed store again (`None`: not failed by IO).
    recover_at: Option<Instant>,
    prev_batch: usize,
    syncs: u64,
    records: u64,
}

/// The chain head continuing from the last recovered record, and whether
/// that record was a checkpoint.
fn resume(device: &DeviceId, recovery: &Recovery) -> Result<(ChainHead, Option<u64>), ResumeError> {
    let Some(last) = &recovery.last else {
        return Ok((ChainHead::genesis(device.clone()), None));
    };
    let record = Record::decode(&last.payload).map_err(|error| ResumeError::Undecodable {
        seq: last.seq,
        error,
    })?;
    if record.device != *device {
        return Err(ResumeError::OtherDevice {
            found: Box::new(record.device.clone()),
            expected: Box::new(device.clone()),
        });
    }
    if record.seq != last.seq {
        return Err(ResumeError::SeqMismatch {
            frame: last.seq,
            record: record.seq,
        });
    }
    let checkpoint = matches!(record.body, Body::Checkpoint(_)).then_some(last.seq);
    let hash = record_hash(&RingCrypto, &last.payload);
    Ok((
        ChainHead::resume(device.clone(), last.seq, hash),
        checkpoint,
    ))
}

impl Writer {
    fn new(start: WriterStart) -> (Writer, watch::Receiver<LineageStatus>) {
        let (store, chain, health, last_checkpoint) = match start.store {
            Ok((store, recovery)) => match resume(&start.device, &recovery) {
                Ok((chain, checkpoint)) => {
                    if recovery.truncated_bytes > 0 {
                        tracing::warn!(
                            truncated_bytes = recovery.truncated_bytes,
                            last_seq = ?recovery.last.as_ref().map(|f| f.seq),
                            "lineage: torn tail from a crash removed; the chain continues from the last intact record"
                        );
                    }
                    (Some(store), chain, Health::Ok, checkpoint)
                }
                Err(reason) => {
                    tracing::error!(%reason, "lineage corrupted; the gate stays closed");
                    (
                        Some(store),
                        ChainHead::genesis(start.device.clone()),
                        Health::Failed(Failure::Resume(reason)),
                        None,
                    )
                }
            },
            Err(e) => {
                tracing::error!(
                    error = %e,
                    class = e.class().name(),
                    "lineage store unusable; the gate stays closed"
                );
                (
                    None,
                    ChainHead::genesis(start.device.clone()),
                    Health::Failed(Failure::Store(e)),
                    None,
                )
            }
        };
        let quota_bytes = store.as_ref().map_or(0, |s| s.config().quota_bytes);
        let status = LineageStatus {
            health: health.clone(),
            next_seq: chain.next_seq(),
            first_seq: store.as_ref().and_then(Store::first_seq),
            used_bytes: store.as_ref().map_or(0, Store::used_bytes),
            quota_bytes,
            last_checkpoint,
            syncs: 0,
            records: 0,
        };
        let (tx, rx) = watch::channel(status);
        (
            Writer {
                store,
                chain,
                crypto: RingCrypto,
                clock: start.clock,
                boot: start.boot,
                quoter: start.quoter,
                settings: start.settings,
                status: tx,
                health,
                since_checkpoint: 0,
                last_checkpoint,
                last_checkpoint_at: Instant::now(),
                checkpoint_wanted: false,
                checkpoint_retry_at: None,
                recover_at: None,
                prev_batch: 0,
                syncs: 0,
                records: 0,
            },
            rx,
        )
    }

    fn run(mut self, rx: &mpsc::Receiver<Command>) {
        loop {
            let wait = match (self.until_checkpoint_due(), self.until_recovery()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let first = match wait {
                Some(wait) => match rx.recv_timeout(wait) {
                    Ok(command) => command,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.recover_if_due();
                        self.checkpoint_if_due(Vec::new());
                        self.publish();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
                None => match rx.recv() {
                    Ok(command) => command,
                    Err(mpsc::RecvError) => break,
                },
            };
            // Before the batch: a store that recovered takes it.
            self.recover_if_due();
            let batch = self.gather(first, rx);
            let mut appends = VecDeque::new();
            let mut waiters = Vec::new();
            let mut prune = None;
            let mut stop = None;
            for command in batch {
                match command {
                    Command::Append { entry, reply } => appends.push_back((entry, reply)),
                    Command::Prune { through } => {
                        prune = Some(prune.map_or(through, |p: u64| p.max(through)));
                    }
                    Command::Checkpoint { reply } => {
                        self.checkpoint_wanted = true;
                        waiters.extend(reply);
                    }
                    Command::Stop { reply } => stop = Some(reply),
                }
            }
            // Pruning first: it only frees acknowledged records, and the
            // room may be what the appends need.
            if let Some(through) = prune {
                self.prune(through);
            }
            self.prev_batch = appends.len();
            self.write(appends);
            if stop.is_some() {
                self.checkpoint_wanted = true;
            }
            self.checkpoint_if_due(waiters);
            self.publish();
            if let Some(reply) = stop {
                let _ = reply.send(());
                break;
            }
        }
        tracing::debug!("lineage writer stopped");
    }

    /// Everything pending, and (group commit) what is evidently on its way.
    fn gather(&self, first: Command, rx: &mpsc::Receiver<Command>) -> Vec<Command> {
        let mut batch = Batch::default();
        batch.push(first);
        while batch.appends < MAX_BATCH_ENTRIES {
            match rx.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        let window = self.settings.commit_window;
        let wanted = self.prev_batch.min(MAX_BATCH_ENTRIES);
        if window.is_zero() || batch.stop || batch.appends == 0 || batch.appends >= wanted {
            return batch.commands;
        }
        let deadline = Instant::now() + window;
        while batch.appends < wanted && !batch.stop {
            let Some(left) = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
            else {
                break;
            };
            match rx.recv_timeout(left) {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        batch.commands
    }

    fn stamp(&self) -> Stamp {
        Stamp {
            boot: self.boot.get(),
            mono_ms: self.clock.now_ms(),
            wall_ms: self.clock.wall_ms(),
        }
    }

    fn set_health(&mut self, health: Health) {
        if self.health != health {
            match &health {
                Health::Ok => tracing::info!("lineage writable again"),
                Health::QuotaReached => tracing::error!(
                    "lineage quota reached with unacknowledged records: the gate closes until the collector catches up"
                ),
                Health::Failed(reason) => {
                    let class = reason.class();
                    match class {
                        FailureClass::DiskFull => tracing::error!(
                            %reason,
                            class = class.name(),
                            "lineage failed: the disk is full; the gate stays closed until it has room"
                        ),
                        FailureClass::NotWritable => tracing::error!(
                            %reason,
                            class = class.name(),
                            "lineage failed: the disk refuses writes; the gate stays closed until it takes them"
                        ),
                        _ => tracing::error!(
                            %reason,
                            class = class.name(),
                            "lineage failed: the gate stays closed"
                        ),
                    }
                }
            }
            self.health = health;
            // Before any request is answered: a refused permit's client must
            // not see the gate still trusting the lineage.
            self.publish();
        }
    }

    /// Encodes entries from `chain` onward; entries that do not encode are
    /// answered here and left out.
    fn encode(
        &self,
        chain: &mut ChainHead,
        entries: &mut Vec<(Entry, Option<Reply>)>,
        stamp: Stamp,
    ) -> Vec<Vec<u8>> {
        let mut buf = [0u8; MAX_RECORD_LEN];
        let mut encoded = Vec::with_capacity(entries.len());
        let mut kept = Vec::with_capacity(entries.len());
        for (mut entry, reply) in entries.drain(..) {
            entry.settle(stamp.mono_ms);
            match chain.append(&self.crypto, stamp, entry.body(), &mut buf) {
                Ok(appended) => {
                    encoded.push(appended.bytes.to_vec());
                    kept.push((entry, reply));
                }
                Err(e) => {
                    tracing::error!(error = %e, ?entry, "lineage record does not encode; not written");
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(Refused::Encode(e)));
                    }
                }
            }
        }
        *entries = kept;
        encoded
    }

    fn write(&mut self, mut pending: VecDeque<(Entry, Option<Reply>)>) {
        while !pending.is_empty() {
            // One chunk: as many entries as fit one store append.
            let mut chunk = Vec::new();
            let mut bytes = 0usize;
            while bytes < CHUNK_BYTES {
                let Some(item) = pending.pop_front() else {
                    break;
                };
                bytes += MAX_RECORD_LEN;
                chunk.push(item);
            }
            self.write_chunk(chunk);
        }
    }

    fn write_chunk(&mut self, mut chunk: Vec<(Entry, Option<Reply>)>) {
        let refuse_all = |chunk: Vec<(Entry, Option<Reply>)>, why: &Refused| {
            for (_, reply) in chunk {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(why.clone()));
                }
            }
        };
        if let Health::Failed(failure) = &self.health {
            refuse_all(chunk, &Refused::Failed(failure.clone()));
            return;
        }
        let stamp = self.stamp();
        if self.health == Health::QuotaReached {
            // Until pruning made real room: a smaller record fitting now
            // must not make the gate flap open and shut at the boundary.
            let (essential, normal): (Vec<_>, Vec<_>) = chunk
                .into_iter()
                .partition(|(entry, _)| entry.priority() == Priority::Essential);
            refuse_all(normal, &Refused::Quota);
            self.write_essential(essential, stamp);
            return;
        }
        let mut trial = self.chain.clone();
        let encoded = self.encode(&mut trial, &mut chunk, stamp);
        if chunk.is_empty() {
            return;
        }
        let result = {
            let Some(store) = self.store.as_mut() else {
                refuse_all(chunk, &Refused::Failed(Failure::NoStore));
                return;
            };
            let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
            store.append(&refs, Priority::Normal)
        };
        match result {
            Ok(first) => {
                self.syncs += 1;
                self.chain = trial;
                self.answer(chunk, first);
            }
            Err(StoreError::QuotaExceeded { .. }) => {
                self.set_health(Health::QuotaReached);
                let (essential, normal): (Vec<_>, Vec<_>) = chunk
                    .into_iter()
                    .partition(|(entry, _)| entry.priority() == Priority::Essential);
                refuse_all(normal, &Refused::Quota);
                self.write_essential(essential, stamp);
            }
            Err(e) => self.store_failed(e, chunk),
        }
    }

    fn write_essential(&mut self, mut essential: Vec<(Entry, Option<Reply>)>, stamp: Stamp) {
        if essential.is_empty() {
            return;
        }
        let mut trial = self.chain.clone();
        let encoded = self.encode(&mut trial, &mut essential, stamp);
        let result = match self.store.as_mut() {
            Some(store) => {
                let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
                store.append(&refs, Priority::Essential)
            }
            None => return,
        };
        match result {
            Ok(first) => {
                self.syncs += 1;
                self.chain = trial;
                self.answer(essential, first);
            }
            Err(StoreError::QuotaExceeded { used, quota }) => {
                tracing::error!(
                    used,
                    quota,
                    "lineage reserve exhausted: even gate-closing records are refused"
                );
                for (_, reply) in essential {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(Refused::Quota));
                    }
                }
            }
            Err(e) => self.store_failed(e, essential),
        }
    }

    fn store_failed(&mut self, error: StoreError, chunk: Vec<(Entry, Option<Reply>)>) {
        let why = match &error {
            StoreError::BadFrame(_) => Refused::Frame(error.clone()),
            _ => Refused::Failed(Failure::Store(error.clone())),
        };
        if self.store.as_ref().is_some_and(|s| s.failure().is_some()) {
            // Whatever the class, the store refuses everything until a
            // recovery proves the disk takes a batch again: a full disk
            // that got room and an IO error that went away alike.
            self.set_health(Health::Failed(Failure::Store(error)));
            self.recover_at = Some(Instant::now() + RECOVER_RETRY);
        }
        for (_, reply) in chunk {
            if let Some(reply) = reply {
                let _ = reply.send(Err(why.clone()));
            }
        }
    }

    /// Counts a durable chunk, publishes the status that includes it, and
    /// only then answers its waiters: whoever holds an answer also sees it
    /// counted.
    fn answer(&mut self, chunk: Vec<(Entry, Option<Reply>)>, first: u64) {
        let mut replies = Vec::with_capacity(chunk.len());
        for (seq, (entry, reply)) in (first..).zip(chunk) {
            self.records += 1;
            self.since_checkpoint += 1;
            if entry.is_transition() {
                self.checkpoint_wanted = true;
            }
            if let Entry::Checkpoint { .. } = entry {
                self.since_checkpoint = 0;
                self.last_checkpoint = Some(seq);
                self.last_checkpoint_at = Instant::now();
            }
            if let Some(reply) = reply {
                replies.push((seq, reply));
            }
        }
        if self.since_checkpoint >= self.settings.checkpoint_every_records {
            self.checkpoint_wanted = true;
        }
        self.publish();
        for (seq, reply) in replies {
            let _ = reply.send(Ok(seq));
        }
    }

    fn until_recovery(&self) -> Option<Duration> {
        self.recover_at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Asks a store failed by IO to recover, once [`RECOVER_RETRY`] passed.
    fn recover_if_due(&mut self) {
        let Some(at) = self.recover_at else {
            return;
        };
        if Instant::now() < at {
            return;
        }
        let Some(store) = self.store.as_mut() else {
            return;
        };
        match store.recover() {
            Ok(()) => {
                self.recover_at = None;
                tracing::warn!(
                    next_seq = self.chain.next_seq(),
                    "lineage store usable again: the failed write was cut off, the chain continues from the last durable record"
                );
                self.set_health(Health::Ok);
            }
            Err(e) => {
                tracing::debug!(error = %e, class = e.class().name(), "lineage store still not writable");
                self.recover_at = Some(Instant::now() + RECOVER_RETRY);
            }
        }
    }

    fn until_checkpoint_due(&self) -> Option<Duration> {
        if self.since_checkpoint == 0 || !self.health.is_ok() {
            return None;
        }
        let due = self.last_checkpoint_at + self.settings.checkpoint_every;
        let due = self.checkpoint_retry_at.map_or(due, |retry| retry.max(due));
        Some(due.saturating_duration_since(Instant::now()))
    }

    fn checkpoint_if_due(&mut self, waiters: Vec<Reply>) {
        let now = Instant::now();
        let timed = self.since_checkpoint > 0
            && now >= self.last_checkpoint_at + self.settings.checkpoint_every;
        let backing_off = self.checkpoint_retry_at.is_some_and(|at| now < at) && waiters.is_empty();
        let result = if (self.checkpoint_wanted || timed) && !backing_off {
            self.checkpoint_wanted = false;
            Some(self.checkpoint())
        } else {
            None
        };
        for reply in waiters {
            let answer = match &result {
                Some(r) => r.clone(),
                None => self.last_checkpoint.ok_or(Refused::Empty),
            };
            let _ = reply.send(answer);
        }
    }

    fn checkpoint(&mut self) -> Result<u64, Refused> {
        if self.since_checkpoint == 0 {
            return self.last_checkpoint.ok_or(Refused::Empty);
        }
        if let Health::Failed(failure) = &self.health {
            return Err(Refused::Failed(failure.clone()));
        }
        let Some((seq, qualifying_data)) = self.chain.checkpoint_qualifying_data(&self.crypto)
        else {
            return Err(Refused::Empty);
        };
        let head = *self.chain.head();
        let (attest, signature) = match self.quoter.quote(qualifying_data) {
            Ok(quote) => quote,
            Err(reason) => {
                // Whatever the class, the checkpoint waits: records stay
                // durable and chained without it, and a TPM that is gone is
                // the drift check's and the attestation's to act on.
                let class = crate::platform::class_name(reason.class());
                tracing::warn!(%reason, class, seq, "checkpoint quote failed; retrying later");
                self.checkpoint_retry_at = Some(Instant::now() + CHECKPOINT_RETRY);
                return Err(Refused::Quote(Arc::new(reason)));
            }
        };
        self.checkpoint_retry_at = None;
        let (reply, mut answer) = oneshot::channel();
        let entry = Entry::Checkpoint {
            seq,
            head,
            attest,
            signature,
        };
        self.write_chunk(vec![(entry, Some(reply))]);
        match answer.try_recv() {
            Ok(result) => {
                if let Ok(at) = result {
                    tracing::debug!(seq = at, covers = seq, "lineage checkpoint");
                }
                result
            }
            Err(_) => Err(Refused::Stopped),
        }
    }

    fn prune(&mut self, through: u64) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        match store.prune_through(through) {
            Ok(0) => {}
            Ok(freed) => {
                tracing::debug!(through, freed, "lineage segments pruned");
                // Writable again only with room for more than a few
                // records: an eighth of the quota, at least a segment.
                let config = store.config();
                let margin = (config.quota_bytes / 8).max(config.segment_bytes);
                if self.health == Health::QuotaReached
                    && store.used_bytes().saturating_add(margin) <= config.quota_bytes
                {
                    self.set_health(Health::Ok);
                }
            }
            Err(e) => tracing::warn!(error = %e, "lineage prune failed"),
        }
    }

    fn publish(&self) {
        let status = LineageStatus {
            health: self.health.clone(),
            next_seq: self.chain.next_seq(),
            first_seq: self.store.as_ref().and_then(Store::first_seq),
            used_bytes: self.store.as_ref().map_or(0, Store::used_bytes),
            quota_bytes: self.store.as_ref().map_or(0, |s| s.config().quota_bytes),
            last_checkpoint: self.last_checkpoint,
            syncs: self.syncs,
            records: self.records,
        };
        self.status.send_if_modified(|current| {
            if *current == status {
                false
            } else {
                *current = status;
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use mctc_shim::gate::{CloseReason, GateEvent, Verdict};
    use mctc_shim::lineage::{ChainVerifier, DenyCode, Record, Step, VerdictCode};

    use super::*;
    use crate::clock::BootClock;
    use crate::lineage::store::{StoreConfig, read_range};

    struct FixedQuoter;

    impl Quoter for FixedQuoter {
        fn quote(
            &mut self,
            qualifying_data: [u8; 32],
        ) -> Result<(Vec<u8>, Vec<u8>), crate::platform::PlatformError> {
            // Not a TPM: the chain rules, not the quote, are under test.
            Ok((qualifying_data.to_vec(), b"signature".to_vec()))
        }
    }

    fn device() -> DeviceId {
        DeviceId::new("d1").unwrap()
    }

    fn start(dir: &Path, config: impl FnOnce(&mut StoreConfig), every: u64) -> LineageHandle {
        let mut store = StoreConfig::new(dir);
        config(&mut store);
        let (handle, _thread) = spawn(WriterStart {
            store: Store::open(store),
            device: device(),
            clock: Arc::new(BootClock {
                wall_trusted: false,
            }),
            boot: CurrentBoot::default(),
            quoter: Box::new(FixedQuoter),
            settings: WriterSettings {
                commit_window: Duration::from_micros(500),
                checkpoint_every_records: every,
                checkpoint_every: Duration::from_secs(3600),
            },
        })
        .unwrap();
        handle
    }

    fn stop(handle: &LineageHandle) {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(handle.stop());
    }

    fn drift(i: usize) -> Entry {
        Entry::drift(mctc_shim::lineage::DriftKind::Pcr, &format!("test {i}"))
    }

    /// Verifies the whole log from genesis; returns `each` of every record.
    fn verify_log_with<T>(dir: &Path, mut each: impl FnMut(&Record<'_>) -> T) -> Vec<T> {
        let frames = read_range(dir, 0, u64::MAX, usize::MAX, usize::MAX).unwrap();
        let mut chain = ChainVerifier::genesis(device());
        frames
            .iter()
            .map(|f| match chain.push(&RingCrypto, &f.payload).unwrap() {
                Step::Appended { record, .. } => each(&record),
                Step::Duplicate { .. } => panic!("duplicate in the log"),
            })
            .collect()
    }

    /// Verifies the whole log from genesis; returns (seq, is_checkpoint).
    fn verify_log(dir: &Path) -> Vec<(u64, bool)> {
        verify_log_with(dir, |record| {
            (record.seq, matches!(record.body, Body::Checkpoint(_)))
        })
    }

    /// The log's one segment file.
    fn segment(dir: &Path) -> std::path::PathBuf {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .unwrap()
    }

    #[test]
    fn concurrent_appends_are_answered_only_once_durable_and_share_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let lineage = start(dir.path(), |_| {}, 1_000_000);
        let threads: Vec<_> = (0..64)
            .map(|t| {
                let lineage = lineage.clone();
                let dir = dir.path().to_owned();
                std::thread::spawn(move || {
                    let mut seqs = Vec::new();
                    for i in 0..20 {
                        let seq = lineage
                            .append(drift(t * 100 + i))
                            .blocking_recv()
                            .unwrap()
                            .unwrap();
                        // Answered means on disk: a reader sees it now.
                        let on_disk = read_range(&dir, seq, seq + 1, 1, usize::MAX).unwrap();
                        assert_eq!(on_disk.len(), 1, "seq {seq} answered before durable");
                        seqs.push(seq);
                    }
                    seqs
                })
            })
            .collect();
        let mut all: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..1280).collect::<Vec<_>>());
        let status = lineage.current();
        assert_eq!(status.records, 1280);
        assert!(
            status.syncs * 8 <= status.records,
            "group commit: {} syncs for {} records",
            status.syncs,
            status.records
        );
        stop(&lineage);
        assert_eq!(
            verify_log(dir.path()).len(),
            1281,
            "records + final checkpoint"
        );
    }

    #[test]
    fn a_permit_stamped_at_or_after_its_deadline_is_recorded_as_the_closed_gates_deny() {
        let dir = tempfile::tempdir().unwrap();
        let lineage = start(dir.path(), |_| {}, 1_000_000);
        let now = mctc_service::clock::boottime_ms();
        let permit = |valid_until_ms| Entry::Decision {
            verdict: Verdict::Permit,
            cti: Some([1; 16]),
            op: "unlock".into(),
            amount: None,
            currency: None,
            reference: None,
            valid_until_ms: Some(valid_until_ms),
        };
        // Still valid when written; lapsed before it was written (the
        // deadline is "now", the stamp comes later).
        lineage
            .append(permit(now + 60_000))
            .blocking_recv()
            .unwrap()
            .unwrap();
        lineage
            .append(permit(now))
            .blocking_recv()
            .unwrap()
            .unwrap();
        stop(&lineage);
        let verdicts = verify_log_with(dir.path(), |record| match &record.body {
            Body::Decision(d) => Some((d.verdict, d.deny)),
            _ => None,
        });
        assert_eq!(
            verdicts[..2],
            [
                Some((VerdictCode::Permit, None)),
                Some((VerdictCode::Deny, Some(DenyCode::Closed)))
            ]
        );
    }

    #[test]
    fn checkpoints_follow_every_n_records_and_every_transition() {
        let dir = tempfile::tempdir().unwrap();
        let lineage = start(dir.path(), |_| {}, 10);
        for i in 0..25 {
            lineage.append(drift(i)).blocking_recv().unwrap().unwrap();
        }
        lineage
            .append(Entry::Gate(GateEvent::Closed(CloseReason::Shutdown)))
            .blocking_recv()
            .unwrap()
            .unwrap();
        let asked = lineage.checkpoint().blocking_recv().unwrap().unwrap();
        stop(&lineage);
        let log = verify_log(dir.path());
        let checkpoints: Vec<u64> = log.iter().filter(|(_, c)| *c).map(|(s, _)| *s).collect();
        // After records 0-9 (seq 10), 11-20 (seq 21), then the transition.
        assert_eq!(checkpoints.first(), Some(&10));
        assert_eq!(checkpoints.get(1), Some(&21));
        let (last_seq, last_is_checkpoint) = *log.last().unwrap();
        assert!(last_is_checkpoint);
        assert_eq!(
            asked, last_seq,
            "nothing written after the transition's checkpoint"
        );
    }

    #[test]
    fn at_the_quota_normal_records_are_refused_essential_ones_kept_and_pruning_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let lineage = start(
            dir.path(),
            |c| {
                c.segment_bytes = 4096;
                c.quota_bytes = 16 * 1024;
                c.reserve_bytes = 16 * 1024;
            },
            1_000_000,
        );
        let decision = || Entry::AgentStart {
            sw_version: "0.1.0".into(),
        };
        let mut refused = None;
        for _ in 0..1000 {
            match lineage.append(decision()).blocking_recv().unwrap() {
                Ok(_) => {}
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        assert!(matches!(refused, Some(Refused::Quota)), "{refused:?}");
        assert_eq!(lineage.current().health, Health::QuotaReached);
        let written_before = lineage.current().next_seq;
        lineage
            .append(Entry::Gate(GateEvent::Closed(
                CloseReason::LineageUnavailable,
            )))
            .blocking_recv()
            .unwrap()
            .expect("essential record uses the reserve");
        assert!(matches!(
            lineage.append(decision()).blocking_recv().unwrap(),
            Err(Refused::Quota)
        ));
        // Nothing was dropped to make room, and the transition's checkpoint
        // used the reserve too: without it no receipt could cover the
        // backlog, and nothing could ever be pruned.
        let log = verify_log(dir.path());
        assert_eq!(log.len() as u64, written_before + 2);
        assert!(log.last().unwrap().1, "the last record is a checkpoint");
        lineage.prune(written_before);
        lineage
            .append(decision())
            .blocking_recv()
            .unwrap()
            .expect("room again");
        assert_eq!(lineage.current().health, Health::Ok);
        stop(&lineage);
    }

    #[test]
    fn a_restart_continues_the_chain_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let lineage = start(dir.path(), |_| {}, 1_000_000);
        for i in 0..5 {
            lineage.append(drift(i)).blocking_recv().unwrap().unwrap();
        }
        stop(&lineage);
        // A crash in the middle of the next write: half a frame.
        let segment = segment(dir.path());
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes.extend_from_slice(&[0x40, 0, 0, 0, 1, 2, 3]);
        std::fs::write(&segment, &bytes).unwrap();
        let lineage = start(dir.path(), |_| {}, 1_000_000);
        let seq = lineage.append(drift(9)).blocking_recv().unwrap().unwrap();
        assert_eq!(seq, 6, "5 records and the stop checkpoint before it");
        stop(&lineage);
        assert_eq!(verify_log(dir.path()).len(), 8);
    }

    /// A writer on the store in `dir` after `break_it` broke its disk.
    fn start_broken(dir: &Path, break_it: impl FnOnce(&mut Store)) -> LineageHandle {
        let (mut store, recovery) = Store::open(StoreConfig::new(dir)).unwrap();
        break_it(&mut store);
        let (lineage, _thread) = spawn(WriterStart {
            store: Ok((store, recovery)),
            device: device(),
            clock: Arc::new(BootClock {
                wall_trusted: false,
            }),
            boot: CurrentBoot::default(),
            quoter: Box::new(FixedQuoter),
            settings: WriterSettings {
                commit_window: Duration::ZERO,
                checkpoint_every_records: 1_000_000,
                checkpoint_every: Duration::from_secs(3600),
            },
        })
        .unwrap();
        lineage
    }

    /// A full disk and a failing one both fail the store closed, but the
    /// refusal and the health keep which it was (ENOSPC vs EBADF), and a
    /// full disk that got room recovers like any IO failure.
    #[test]
    fn a_full_disk_fails_closed_as_disk_full_and_recovers_once_it_has_room() {
        let dir = tempfile::tempdir().unwrap();
        let lineage = start(dir.path(), |_| {}, 1_000_000);
        for i in 0..3 {
            lineage.append(drift(i)).blocking_recv().unwrap().unwrap();
        }
        stop(&lineage);
        let lineage = start_broken(dir.path(), Store::fill_disk);
        let refused = lineage
            .append(drift(3))
            .blocking_recv()
            .unwrap()
            .unwrap_err();
        assert!(matches!(refused, Refused::Failed(_)), "{refused}");
        assert_eq!(refused.class(), Some(FailureClass::DiskFull), "{refused}");
        let Health::Failed(failure) = lineage.current().health else {
            panic!("health {:?}", lineage.current().health);
        };
        assert_eq!(failure.class(), FailureClass::DiskFull);
        assert!(
            matches!(&failure, Failure::Store(e) if e.io_kind() == Some(std::io::ErrorKind::StorageFull)),
            "{failure:?}"
        );
        // The status text is the store's message, as before.
        assert!(
            failure.to_string().starts_with("lineage store "),
            "{failure}"
        );
        // The probe goes to the real directory, which has room.
        let started = Instant::now();
        while !lineage.current().health.is_ok() {
            assert!(started.elapsed() < RECOVER_RETRY * 5, "never recovered");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            lineage.append(drift(4)).blocking_recv().unwrap().unwrap(),
            4
        );
        stop(&lineage);
        assert_eq!(verify_log(dir.path()).len(), 6);
    }

    #[test]
    fn a_store_failed_by_io_recovers_and_the_chain_continues_from_the_last_durable_record() {
        let dir = tempfile::tempdir().unwrap();
        let lineage = start(dir.path(), |_| {}, 1_000_000);
        for i in 0..3 {
            lineage.append(drift(i)).blocking_recv().unwrap().unwrap();
        }
        stop(&lineage);
        let lineage = start_broken(dir.path(), Store::lose_write_access);
        // 3 records and the stop checkpoint are durable; the next write fails
        // (EBADF: an IO error, not a full disk).
        let refused = lineage
            .append(drift(3))
            .blocking_recv()
            .unwrap()
            .unwrap_err();
        assert!(matches!(refused, Refused::Failed(_)), "{refused}");
        assert_eq!(refused.class(), Some(FailureClass::Io), "{refused}");
        assert!(matches!(
            lineage.current().health,
            Health::Failed(ref e) if e.class() == FailureClass::Io
        ));
        let started = Instant::now();
        while !lineage.current().health.is_ok() {
            assert!(started.elapsed() < RECOVER_RETRY * 5, "never recovered");
            std::thread::sleep(Duration::from_millis(20));
        }
        let seq = lineage.append(drift(4)).blocking_recv().unwrap().unwrap();
        assert_eq!(seq, 4, "the refused record took no seq");
        stop(&lineage);
        let log = verify_log(dir.path());
        assert_eq!(log.len(), 6, "{log:?}");
    }

    #[test]
    fn a_corrupted_log_refuses_everything() {
        let dir = tempfile::tempdir().unwrap();
        let lineage = start(dir.path(), |_| {}, 1_000_000);
        for i in 0..40 {
            lineage.append(drift(i)).blocking_recv().unwrap().unwrap();
        }
        stop(&lineage);
        let segment = segment(dir.path());
        let mut bytes = std::fs::read(&segment).unwrap();
        // Pad the tail beyond the torn-write bound so the damage is "middle".
        let middle = 16 + 40;
        bytes[middle] ^= 0x01;
        bytes.extend(std::iter::repeat_n(0u8, 300 * 1024));
        std::fs::write(&segment, &bytes).unwrap();
        let lineage = start(dir.path(), |_| {}, 1_000_000);
        assert!(matches!(
            lineage.current().health,
            Health::Failed(ref e) if e.class() == FailureClass::Corrupt && e.to_string().contains("corrupt")
        ));
        assert!(matches!(
            lineage.append(drift(99)).blocking_recv().unwrap(),
            Err(Refused::Failed(_))
        ));
        stop(&lineage);
        // Nothing was rewritten.
        assert_eq!(std::fs::read(&segment).unwrap(), bytes);
    }
}

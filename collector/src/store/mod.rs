//! Where verified lineage, registry records and anomalies live.
//!
//! [`Store`] is the seam between the ingest logic and a database: SQLite
//! ([`sqlite::SqliteStore`]) today, PostgreSQL when several collectors share
//! one database. The ingest path reads (head, stored record, pending
//! record), decides, and writes everything one batch changed with a single
//! [`Store::apply`], which is atomic and checks that the device's head is
//! still the one the decision was based on (so two writers can never both
//! extend one chain).

pub mod sqlite;

use mctc_attest::ClockInfo;
use mctc_shim::DeviceId;
use mctc_shim::messages::AckAnomaly;
use mctc_shim::tpm::BootCounters;
use serde::Serialize;

use crate::registry::RegistryEntry;

pub use mctc_service::sqlite::Fault;

/// Why the store failed. Every variant is the collector's problem (the
/// database, the disk, this code), never the device's:
/// [`StoreError::is_transient`] says whether the same operation may succeed
/// later (a busy database, a head another writer keeps moving); anything
/// else is logged at error level and never answered with an anomaly.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The SQLite database failed; `fault` classifies it (busy → retry;
    /// corrupt, full, IO, read-only → the operator's problem).
    #[error("{fault}: {source}")]
    Sqlite {
        /// What kind of failure.
        fault: Fault,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The device's head moved since it was read: another writer extended
    /// the chain. The caller re-reads and decides again.
    #[error("head of {device} moved: expected next seq {expected}, found {found}")]
    HeadMoved {
        /// The device.
        device: String,
        /// The next seq the caller read.
        expected: u64,
        /// The next seq in the store.
        found: u64,
    },
    /// A number does not fit the database's signed 64-bit integers.
    #[error("{what} = {value} does not fit a signed 64-bit integer")]
    OutOfRange {
        /// Which value.
        what: &'static str,
        /// The value.
        value: u64,
    },
    /// Stored data breaks an invariant (hand-edited or corrupted database).
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// The database was written by a newer collector.
    #[error("database schema version {found} is newer than this collector's {supported}")]
    SchemaTooNew {
        /// The database's `user_version`.
        found: i64,
        /// The newest this build knows.
        supported: i64,
    },
    /// The database file cannot be used as the store requires (not
    /// creatable, WAL refused, or SQLite failed while opening it).
    #[error("open: {0}")]
    Open(mctc_service::sqlite::OpenError),
}

impl From<rusqlite::Error> for StoreError {
    fn from(source: rusqlite::Error) -> Self {
        StoreError::Sqlite {
            fault: Fault::of(&source),
            source,
        }
    }
}

impl StoreError {
    /// The database's failure class, where the database reported one.
    pub fn fault(&self) -> Option<Fault> {
        match self {
            StoreError::Sqlite { fault, .. } => Some(*fault),
            StoreError::Open(e) => e.fault(),
            StoreError::HeadMoved { .. }
            | StoreError::OutOfRange { .. }
            | StoreError::Corrupt(_)
            | StoreError::SchemaTooNew { .. } => None,
        }
    }

    /// Whether the same operation may succeed if tried again later: the
    /// database was busy past its busy timeout, or other writers kept
    /// moving the device's head through every re-decision.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::HeadMoved { .. } => true,
            other => other.fault().is_some_and(Fault::is_transient),
        }
    }

    /// A stable name of the failure's kind (logs, counters).
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Sqlite { fault, .. } => fault.name(),
            StoreError::HeadMoved { .. } => "head_moved",
            StoreError::OutOfRange { .. } => "out_of_range",
            StoreError::Corrupt(_) => "corrupt_row",
            StoreError::SchemaTooNew { .. } => "too_new",
            StoreError::Open(e) => e.fault().map_or("unusable", Fault::name),
        }
    }
}

impl From<mctc_service::sqlite::OpenError> for StoreError {
    fn from(e: mctc_service::sqlite::OpenError) -> Self {
        match e {
            mctc_service::sqlite::OpenError::TooNew { found, supported } => {
                StoreError::SchemaTooNew { found, supported }
            }
            e => StoreError::Open(e),
        }
    }
}

/// The verified end of a device's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The seq the next record must have (0: nothing stored yet).
    pub next_seq: u64,
    /// The hash of record `next_seq - 1` (zeros before the first).
    pub hash: [u8; 32],
    /// Boot counters of the last record.
    pub last_boot: Option<BootCounters>,
    /// `mono_ms` of the last record.
    pub last_mono_ms: u64,
    /// The signed TPM clock of the last verified checkpoint.
    pub last_quote_clock: Option<ClockInfo>,
}

impl Head {
    /// Nothing stored yet.
    pub const fn genesis() -> Self {
        Self {
            next_seq: 0,
            hash: [0; 32],
            last_boot: None,
            last_mono_ms: 0,
            last_quote_clock: None,
        }
    }

    /// The highest seq of the verified chain from seq 0 (`None`: empty).
    pub fn through_seq(&self) -> Option<u64> {
        self.next_seq.checked_sub(1)
    }
}

/// A verified record to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    /// Its seq.
    pub seq: u64,
    /// Its hash.
    pub hash: [u8; 32],
    /// Its `RecordKind` code.
    pub kind: u8,
    /// Boot counters.
    pub boot: BootCounters,
    /// CLOCK_BOOTTIME ms on the device.
    pub mono_ms: u64,
    /// Unix ms, when the device trusted its wall clock.
    pub wall_ms: Option<u64>,
    /// The exact encoding.
    pub bytes: Vec<u8>,
}

/// A checkpoint whose quote verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCheckpoint {
    /// The checkpoint record's seq.
    pub seq: u64,
    /// The seq it commits to (`seq - 1`).
    pub committed_seq: u64,
    /// The signed TPM clock info.
    pub clock: ClockInfo,
    /// The signed composite PCR digest.
    pub pcr_digest: Vec<u8>,
}

/// What kind of anomaly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// Lineage from a device with no registry record (not acked, held).
    UnknownDevice,
    /// A batch or record does not decode, or exceeds its size limit.
    Undecodable,
    /// A batch or record names another device than its topic.
    WrongDevice,
    /// Records are missing: later ones arrived and the hole did not fill.
    Gap,
    /// Two different records for one seq.
    Fork,
    /// A record's `prev` is not its predecessor's hash.
    LinkMismatch,
    /// A checkpoint does not commit to its predecessor or its quote does
    /// not verify against the enrolled AK.
    BadCheckpoint,
    /// `mono_ms` went backwards within one boot.
    ClockRegression,
    /// Boot counters went backwards (in the records' stamps or in the
    /// TPM-signed clock of successive checkpoints). Alert only: the chain
    /// itself is intact.
    BootRegression,
}

impl AnomalyKind {
    /// Every kind.
    pub const ALL: [Self; 9] = [
        Self::UnknownDevice,
        Self::Undecodable,
        Self::WrongDevice,
        Self::Gap,
        Self::Fork,
        Self::LinkMismatch,
        Self::BadCheckpoint,
        Self::ClockRegression,
        Self::BootRegression,
    ];

    /// The stable snake_case name stored and published.
    pub const fn name(self) -> &'static str {
        match self {
            Self::UnknownDevice => "unknown_device",
            Self::Undecodable => "undecodable",
            Self::WrongDevice => "wrong_device",
            Self::Gap => "gap",
            Self::Fork => "fork",
            Self::LinkMismatch => "link_mismatch",
            Self::BadCheckpoint => "bad_checkpoint",
            Self::ClockRegression => "clock_regression",
            Self::BootRegression => "boot_regression",
        }
    }

    /// The kind for a stored name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The code an ack carries for it; `None` for kinds that do not stop
    /// the chain (or are never acked).
    pub const fn ack_code(self) -> Option<AckAnomaly> {
        match self {
            Self::Undecodable => Some(AckAnomaly::Undecodable),
            Self::WrongDevice => Some(AckAnomaly::WrongDevice),
            Self::Gap => Some(AckAnomaly::Gap),
            Self::Fork => Some(AckAnomaly::Conflict),
            Self::LinkMismatch => Some(AckAnomaly::LinkMismatch),
            Self::BadCheckpoint => Some(AckAnomaly::BadCheckpoint),
            Self::ClockRegression => Some(AckAnomaly::ClockRegression),
            Self::UnknownDevice | Self::BootRegression => None,
        }
    }
}

/// An anomaly to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAnomaly {
    /// What kind.
    pub kind: AnomalyKind,
    /// The seq it was found at, if it concerns one.
    pub seq: Option<u64>,
    /// One line for operators.
    pub detail: String,
    /// The offending bytes (a forked record, a record that failed), kept as
    /// evidence; at most one record (2048 bytes).
    pub evidence: Option<Vec<u8>>,
}

/// A recorded anomaly. Repeats of the same (device, kind, seq, evidence)
/// raise `count` instead of adding rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Anomaly {
    /// Row id.
    pub id: i64,
    /// The device.
    pub device: String,
    /// What kind.
    pub kind: AnomalyKind,
    /// The seq, if any.
    pub seq: Option<u64>,
    /// One line for operators.
    pub detail: String,
    /// SHA-256 of the evidence, hex (empty when none).
    pub evidence_sha256: String,
    /// Unix ms first seen.
    pub first_seen_ms: u64,
    /// Unix ms last seen.
    pub last_seen_ms: u64,
    /// How many times it was seen.
    pub count: u64,
}

/// Anomaly rows kept per device and kind unless configured otherwise
/// (`[ingest] anomaly_rows_per_kind`).
pub const DEFAULT_ANOMALY_ROWS_PER_KIND: u64 = 64;

/// What [`Store::apply`] did with one anomaly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// A new row (a first sighting), kept with its evidence.
    New(Anomaly),
    /// A repeat of a kept row (same device, kind, seq and evidence): its
    /// `count` went up.
    Repeat,
    /// A first sighting beyond the per-device-and-kind bound: not kept,
    /// only counted in the kind's overflow total (which it returns).
    Overflow(AnomalyOverflow),
}

/// The anomalies of one device and kind that were not kept as rows, because
/// the first `anomaly_rows_per_kind` already were.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnomalyOverflow {
    /// The device.
    pub device: String,
    /// What kind.
    pub kind: AnomalyKind,
    /// How many were not kept.
    pub count: u64,
    /// Unix ms of the first one not kept.
    pub first_seen_ms: u64,
    /// Unix ms of the latest one.
    pub last_seen_ms: u64,
    /// The latest one's detail.
    pub last_detail: String,
}

/// Everything one batch changes for one device, applied atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// The next seq the decision was based on (compare-and-swap).
    pub expected_next: u64,
    /// The new head, if records were appended.
    pub head: Option<Head>,
    /// Verified records, ascending seq, continuing from `expected_next`.
    pub records: Vec<NewRecord>,
    /// Verified checkpoints among them.
    pub checkpoints: Vec<NewCheckpoint>,
    /// Records ahead of the head, kept until the hole before them fills.
    pub pending_add: Vec<(u64, Vec<u8>)>,
    /// Pending records to drop (consumed or rejected).
    pub pending_remove: Vec<u64>,
    /// Anomalies found.
    pub anomalies: Vec<NewAnomaly>,
}

/// What [`Store::put_registry`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryChange {
    /// The device was not known.
    New,
    /// A higher version replaced the stored one.
    Replaced,
    /// The same version with the same signed bytes (a redelivery).
    Unchanged,
    /// A lower version, or the same version with different bytes: kept the
    /// stored one.
    Stale,
}

/// Records held ahead of a device's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSummary {
    /// The device.
    pub device: String,
    /// How many records.
    pub count: u64,
    /// The lowest pending seq.
    pub lowest_seq: u64,
    /// Unix ms the oldest of them arrived.
    pub oldest_ms: u64,
}

/// The collector's persistent state. Implementations are used from one
/// thread at a time (the ingest worker owns its store).
pub trait Store: Send {
    /// The device's registry entry.
    fn registry(&self, device: &DeviceId) -> Result<Option<RegistryEntry>, StoreError>;

    /// Keeps `entry` if its version is higher than the stored one.
    fn put_registry(
        &mut self,
        entry: &RegistryEntry,
        now_ms: u64,
    ) -> Result<RegistryChange, StoreError>;

    /// The device's verified head (`None`: nothing stored yet).
    fn head(&self, device: &DeviceId) -> Result<Option<Head>, StoreError>;

    /// The stored record at `seq`.
    fn record(&self, device: &DeviceId, seq: u64) -> Result<Option<Vec<u8>>, StoreError>;

    /// The seq of the newest verified checkpoint record at or below
    /// `at_most` (`None`: none).
    fn latest_checkpoint(&self, device: &DeviceId, at_most: u64)
    -> Result<Option<u64>, StoreError>;

    /// The stored records `from ..= through`, ascending (an export).
    fn records_range(
        &self,
        device: &DeviceId,
        from: u64,
        through: u64,
    ) -> Result<Vec<Vec<u8>>, StoreError>;

    /// The pending record at `seq`.
    fn pending(&self, device: &DeviceId, seq: u64) -> Result<Option<Vec<u8>>, StoreError>;

    /// Devices with pending records.
    fn pending_summary(&self) -> Result<Vec<PendingSummary>, StoreError>;

    /// Applies one batch's changes atomically. Fails with
    /// [`StoreError::HeadMoved`] (and changes nothing) if the device's next
    /// seq is no longer `changes.expected_next`. Returns, for each anomaly
    /// in order, what was recorded. At most the store's bound of rows is
    /// kept per device and kind: the **first** ones (the beginning of an
    /// attack is the evidence that matters, and a ring would let a hostile
    /// device flush it out with junk); later first sightings only raise the
    /// kind's overflow count.
    fn apply(
        &mut self,
        device: &DeviceId,
        changes: &Changes,
        now_ms: u64,
    ) -> Result<Vec<Recorded>, StoreError>;

    /// Anomalies, newest first; of one device or all.
    fn anomalies(&self, device: Option<&DeviceId>) -> Result<Vec<Anomaly>, StoreError>;

    /// Anomalies counted but not kept (beyond the per-kind bound); of one
    /// device or all.
    fn anomaly_overflow(
        &self,
        device: Option<&DeviceId>,
    ) -> Result<Vec<AnomalyOverflow>, StoreError>;
}

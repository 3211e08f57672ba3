//! The authority's state behind one trait, so that a PostgreSQL backend can
//! be added for fleets that outgrow one machine; [`sqlite::SqliteStore`] is
//! the embedded default.
//!
//! Every method is one atomic step: an implementation must make each a
//! single transaction that serialises with every other writer (SQLite:
//! `BEGIN IMMEDIATE`; PostgreSQL: `SERIALIZABLE` or row locks). Several
//! authority instances and CLI invocations use one store at once, so
//! single use of nonces and proofs, status checks before issuance, and the
//! heartbeat seq are decided by the store, never in memory.

pub mod sqlite;

use mctc_shim::DeviceId;
use mctc_shim::messages::{ControlAction, DeviceStatus, NoncePurpose};

use crate::model::{ClassBaseline, Decision, Forget, LearnMode, NonceCheck, Stage};
use crate::now::{Deadline, Now};

pub use crate::model::{DeviceRecord, Enrolled, PcrSnapshot, Verdict};

pub use mctc_service::sqlite::Fault;

/// A storage failure. [`StoreError::is_transient`] says whether it is worth
/// trying again; every other failure is ours (the database, the disk, this
/// code), never the device's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database engine failed; `fault` classifies it (busy → retry;
    /// corrupt, full, IO → the operator's problem, logged loudly).
    #[error("{fault}: {source}")]
    Backend {
        /// What kind of failure.
        fault: Fault,
        /// The engine's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database file cannot be used as the store requires (WAL refused,
    /// file not creatable).
    #[error("{0}")]
    Unusable(String),
    /// The database was written by a newer version of the authority.
    #[error("schema version {found} is newer than this binary supports ({supported})")]
    TooNew {
        /// Found.
        found: i64,
        /// Supported.
        supported: i64,
    },
    /// A stored value is not what this code wrote (manual edits, bit rot).
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether the same operation may succeed if tried again later (the
    /// database was busy past the busy timeout).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Backend { fault, .. } if fault.is_transient())
    }

    /// A stable name of the failure's kind (logs, counters).
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Backend { fault, .. } => fault.name(),
            StoreError::Unusable(_) => "unusable",
            StoreError::TooNew { .. } => "too_new",
            StoreError::Corrupt(_) => "corrupt_row",
        }
    }
}

/// A device as registered by `devices add`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDevice {
    /// The id.
    pub id: DeviceId,
    /// Its class (validated against the policy by the caller).
    pub class: String,
    /// SHA-256 of the EK `TPM2B_PUBLIC` it must enroll with.
    pub pinned_ek_sha256: Option<[u8; 32]>,
}

/// A credential challenge waiting for its proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEnrollment {
    /// The device.
    pub device: DeviceId,
    /// The agent's attempt id.
    pub request_id: [u8; 16],
    /// The class it enrolls into.
    pub class: String,
    /// An unknown id enrolling on first use (TOFU).
    pub first_use: bool,
    /// The proof the agent must send (the secret itself is not stored).
    pub proof: [u8; 32],
    /// EK `TPM2B_PUBLIC`.
    pub ek_public: Vec<u8>,
    /// Its SHA-256.
    pub ek_sha256: [u8; 32],
    /// AK `TPM2B_PUBLIC`.
    pub ak_public: Vec<u8>,
    /// AK name.
    pub ak_name: Vec<u8>,
    /// Until when the proof is accepted.
    pub deadline: Deadline,
}

/// What committing a proven enrollment did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollCommit {
    /// Enrolled (or re-enrolled); a registry record is queued.
    Enrolled,
    /// The id was revoked meanwhile.
    Revoked,
    /// The id is enrolled with another EK.
    IdentityConflict,
    /// The EK is not the one pinned at registration.
    BadEk,
    /// The id is not registered (and not enrolling on first use).
    NotAllowed,
}

/// What a nonce request got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NonceGrant {
    /// Stored; send it with the PCR selection of the device's `class`.
    Issued { class: String },
    /// Not registered.
    Unknown,
    /// Registered but not enrolled.
    NotEnrolled,
    /// Contained or revoked.
    NotActive(DeviceStatus),
}

/// Fleet-wide counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FleetState {
    /// Last heartbeat seq allocated.
    pub hb_seq: u64,
    /// Revocation epoch.
    pub epoch: u64,
}

/// A new artifact's database side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// The nonce the device quotes for its next renewal.
    pub next_nonce: [u8; 32],
    /// Until when it is accepted.
    pub next_nonce_deadline: Deadline,
    /// The device's outstanding nonces are capped at this.
    pub max_outstanding: u32,
}

/// What [`Store::attest`] decided and recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    /// The decision.
    pub decision: Decision,
    /// The device's class.
    pub class: String,
    /// Fleet counters read in the same transaction.
    pub fleet: FleetState,
    /// The device's status after the decision.
    pub status: DeviceStatus,
    /// The staged rollout this decision stopped (its refusal was the
    /// stage's `stop_after`-th).
    pub stage_stopped: Option<Stage>,
}

/// A staged rollout as `policy stage` starts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStage {
    /// The class.
    pub class: String,
    /// The device the values come from.
    pub from: DeviceId,
    /// (PCR, value) for every PCR of the class.
    pub values: Vec<(u8, [u8; 32])>,
    /// Percent of the class covered, 1-100.
    pub share: u8,
    /// Stop after this many refusals in the share (≥ 1).
    pub stop_after: u32,
}

/// How `policy promote` moves an active stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promotion {
    /// Cover this share (never less than now).
    Widen(u8),
    /// Learn the values for the whole class and end the stage.
    Finish,
}

/// An operator's status change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusChange {
    /// Active → contained.
    Contain,
    /// Contained → active.
    Restore,
    /// Any → revoked (permanent).
    Revoke,
}

impl StatusChange {
    /// The control action it sends.
    pub const fn action(self) -> ControlAction {
        match self {
            StatusChange::Contain => ControlAction::Contain,
            StatusChange::Restore => ControlAction::Restore,
            StatusChange::Revoke => ControlAction::Revoke,
        }
    }
}

/// What a status change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusOutcome {
    /// Changed; a control with this seq is queued.
    Changed {
        /// The new status.
        status: DeviceStatus,
        /// The control's seq.
        control_seq: u64,
    },
    /// Already in the requested state.
    Unchanged(DeviceStatus),
    /// Not allowed from the current state.
    Refused(DeviceStatus),
    /// No such device.
    NotFound,
}

/// What the heartbeat publisher gets when it holds the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatState {
    /// The new seq (strictly above every earlier one).
    pub seq: u64,
    /// Revocation epoch.
    pub epoch: u64,
    /// `revoked` covers epochs `since_epoch+1 ..= epoch`.
    pub since_epoch: u64,
    /// The devices revoked in those epochs, newest first.
    pub revoked: Vec<DeviceId>,
}

/// A message waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxItem {
    /// A control message.
    Control {
        /// Row id (for [`Store::ack_outbox`]).
        id: i64,
        /// The device.
        device: DeviceId,
        /// Its per-device seq.
        seq: u64,
        /// Contain, restore or revoke.
        action: ControlAction,
        /// The reason.
        reason: String,
        /// When it was ordered (Unix ms): the control's `iat`.
        wall_ms: u64,
    },
    /// The device's registry record, built from its current row.
    Registry {
        /// Row id.
        id: i64,
        /// The record's content.
        record: RegistryRow,
    },
    /// The device's rights on the broker: granted, or (revoked or removed)
    /// taken. Acknowledged only when the broker confirms
    /// ([`crate::outbox::broker_reply`]).
    Broker {
        /// Row id.
        id: i64,
        /// The device.
        device: DeviceId,
        /// Grant (active, contained) or revoke.
        grant: bool,
    },
    /// A registry row for a device that has no AK (nothing to publish).
    Skip {
        /// Row id.
        id: i64,
    },
}

impl OutboxItem {
    /// Row id.
    pub fn id(&self) -> i64 {
        match self {
            OutboxItem::Control { id, .. }
            | OutboxItem::Registry { id, .. }
            | OutboxItem::Broker { id, .. }
            | OutboxItem::Skip { id } => *id,
        }
    }
}

/// A registry record's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRow {
    /// The device.
    pub device: DeviceId,
    /// Its class.
    pub class: String,
    /// Enrolled AK.
    pub ak_public: Vec<u8>,
    /// Its name.
    pub ak_name: Vec<u8>,
    /// SHA-256 of the EK.
    pub ek_sha256: [u8; 32],
    /// Standing.
    pub status: DeviceStatus,
    /// Version (strictly increasing per device).
    pub version: u64,
}

/// The authority's storage. See the module docs for the atomicity contract.
pub trait Store: Send {
    /// Registers a device; `Ok(false)` if the id exists.
    fn add_device(&mut self, device: &NewDevice, now: &Now) -> Result<bool, StoreError>;

    /// One device.
    fn device(&mut self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError>;

    /// All devices, by id.
    fn devices(&mut self) -> Result<Vec<DeviceRecord>, StoreError>;

    /// Contain, restore or revoke; queues the signed control and the
    /// registry record; a revocation raises the epoch.
    fn change_status(
        &mut self,
        id: &DeviceId,
        change: StatusChange,
        reason: &str,
        now: &Now,
    ) -> Result<StatusOutcome, StoreError>;

    /// Stores a pending credential challenge (replacing the device's
    /// previous one).
    fn begin_enrollment(&mut self, pending: &PendingEnrollment) -> Result<(), StoreError>;

    /// Removes and returns the device's pending challenge if `request_id`
    /// matches and it has not expired (single use).
    fn take_enrollment(
        &mut self,
        device: &DeviceId,
        request_id: &[u8; 16],
        now: &Now,
    ) -> Result<Option<PendingEnrollment>, StoreError>;

    /// Records a proven enrollment after re-checking the device's state.
    fn commit_enrollment(
        &mut self,
        pending: &PendingEnrollment,
        now: &Now,
    ) -> Result<EnrollCommit, StoreError>;

    /// Stores a nonce for an enrolled, active device, dropping its oldest
    /// beyond `max_outstanding`.
    fn issue_nonce(
        &mut self,
        device: &DeviceId,
        nonce: &[u8; 32],
        purpose: NoncePurpose,
        deadline: &Deadline,
        max_outstanding: u32,
        now: &Now,
    ) -> Result<NonceGrant, StoreError>;

    /// Consumes `nonce`, loads the device and its class's learned
    /// baseline, runs `decide`, and records the decision: verified facts,
    /// the next nonce (`issue`, on affirm), containment. `None` if the
    /// device is not registered (nothing is recorded).
    ///
    /// The nonce is consumed whatever the decision, even one the store
    /// refuses to record ([`StoreError::Corrupt`]: an affirmation of a
    /// device that is not active); only a failed transaction leaves it, as
    /// then nothing was decided.
    fn attest(
        &mut self,
        device: &DeviceId,
        nonce: &[u8; 32],
        issue: &Issue,
        now: &Now,
        decide: &mut dyn FnMut(&DeviceRecord, NonceCheck, &ClassBaseline) -> Decision,
    ) -> Result<Option<Attested>, StoreError>;

    /// If `holder` may publish the heartbeat (it holds or takes the lease
    /// for `lease_ms`), allocates the next seq and reads the revocation
    /// list (at most `max_revoked`).
    fn heartbeat(
        &mut self,
        holder: &str,
        lease_ms: u64,
        max_revoked: usize,
        now: &Now,
    ) -> Result<Option<HeartbeatState>, StoreError>;

    /// Gives the heartbeat lease up (clean shutdown).
    fn release_lease(&mut self, holder: &str) -> Result<(), StoreError>;

    /// Fleet counters.
    fn fleet(&mut self) -> Result<FleetState, StoreError>;

    /// Claims up to `limit` outbox rows for `claim_ms`.
    fn claim_outbox(
        &mut self,
        limit: usize,
        claim_ms: u64,
        now: &Now,
    ) -> Result<Vec<OutboxItem>, StoreError>;

    /// Deletes published outbox rows.
    fn ack_outbox(&mut self, ids: &[i64]) -> Result<(), StoreError>;

    /// Rows waiting in the outbox, claimed or not (for `/metrics`).
    fn outbox_depth(&mut self) -> Result<u64, StoreError>;

    /// Queues again the latest control of every device that has one (same
    /// seq: a device that already has it ignores it as a replay). An outbox
    /// row is deleted once its message is handed to the MQTT client, which
    /// cannot say whether the broker got it; re-announcing at start and on
    /// every new broker session closes that window. Returns the rows queued.
    fn requeue_latest_controls(&mut self, now: &Now) -> Result<usize, StoreError>;

    /// The learned digests of `class` and its latest staged rollout.
    fn baseline(&mut self, class: &str) -> Result<ClassBaseline, StoreError>;

    // The five changes below of what a class accepts each take `seen`,
    // the class's baseline as the caller judged the change against (the
    // devices it would contain), and store nothing (`Ok(None)`/`false`)
    // if it is no longer the class's baseline in the change's own
    // transaction: a count printed to an operator is never of another
    // change than the one made.

    /// Accepts `values` for `class`: besides its learned digests
    /// ([`LearnMode::Add`]) or instead of those of the same PCRs
    /// ([`LearnMode::Replace`]). `false`: `seen` is stale.
    fn learn(
        &mut self,
        seen: &ClassBaseline,
        class: &str,
        values: &[(u8, [u8; 32])],
        from: &DeviceId,
        mode: LearnMode,
        now: &Now,
    ) -> Result<bool, StoreError>;

    /// Removes learned digests of `class`; returns how many (`None`:
    /// `seen` is stale).
    fn forget(
        &mut self,
        seen: &ClassBaseline,
        class: &str,
        forget: &Forget,
    ) -> Result<Option<usize>, StoreError>;

    /// Starts a staged rollout; `None` if `seen` is stale or the class has
    /// an active one.
    fn start_stage(
        &mut self,
        seen: &ClassBaseline,
        stage: &NewStage,
        now: &Now,
    ) -> Result<Option<Stage>, StoreError>;

    /// Widens or finishes the class's active stage; `None` if `seen` is
    /// stale or it has none.
    fn promote_stage(
        &mut self,
        seen: &ClassBaseline,
        class: &str,
        promotion: Promotion,
        now: &Now,
    ) -> Result<Option<Stage>, StoreError>;

    /// Ends the class's active stage (its share is judged by the class's
    /// own values again); `None` if `seen` is stale or it has none.
    fn roll_back_stage(
        &mut self,
        seen: &ClassBaseline,
        class: &str,
        reason: &str,
        now: &Now,
    ) -> Result<Option<Stage>, StoreError>;

    /// Deletes expired nonces and challenges; returns how many.
    fn sweep(&mut self, now: &Now) -> Result<usize, StoreError>;
}

//! The embedded store: SQLite through the system libsqlite3.
//!
//! WAL (readers never block the writer), `synchronous=FULL` (a committed
//! nonce or revocation survives power loss), a busy timeout (several
//! processes share the file), `PRAGMA user_version` as the schema version.
//! Every write is one `BEGIN IMMEDIATE` transaction: it takes the write lock
//! up front, so two processes never both read-then-write the same state
//! (no lost update, no double use of a nonce).
//!
//! One file per concern: [`schema`] (migrations), [`devices`],
//! [`enrollment`], [`evidence`] (nonces, decisions, sweep), [`baselines`]
//! (learned digests, staged rollouts),
//! [`fleet`] (heartbeat lease and seq), [`outbox`], [`restore`] (what a
//! restore changes in the copy), over [`rows`] (the
//! write transaction and the checked readers they share). This module opens the
//! connection and maps the [`Store`] trait onto them.

mod baselines;
mod devices;
mod enrollment;
mod evidence;
mod fleet;
mod outbox;
mod read;
pub mod restore;
mod rows;
mod schema;
#[cfg(test)]
mod tests;

use std::path::Path;

use mctc_service::sqlite::OpenError;
use mctc_shim::DeviceId;
use mctc_shim::messages::NoncePurpose;
use rusqlite::Connection;

use super::{
    Attested, DeviceRecord, EnrollCommit, FleetState, HeartbeatState, Issue, NewDevice, NewStage,
    NonceGrant, OutboxItem, PendingEnrollment, Promotion, StatusChange, StatusOutcome, Store,
    StoreError,
};
use crate::model::{ClassBaseline, Decision, Forget, LearnMode, NonceCheck, Stage};
use crate::now::{Deadline, Now};

pub use read::{DeviceQuery, StatusCounts};
pub use schema::{SCHEMA, SCHEMA_VERSION};

/// The schema, for the shared backup and restore (`mctc_service::sqlite_backup`).
pub const STORE_SCHEMA: mctc_service::sqlite::Schema = schema::SCHEMA;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend {
            fault: super::Fault::of(&e),
            source: Box::new(e),
        }
    }
}

/// The SQLite store. One per thread: a connection is not shared.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    /// Opens (creating, mode 0600, O_EXCL) and migrates the database at
    /// `path`, in WAL (checked) with `synchronous = FULL`: the shared
    /// opener of every mctc store (`mctc_service::sqlite::open`).
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = mctc_service::sqlite::open(path, &schema::SCHEMA)?;
        Ok(SqliteStore { conn })
    }

    /// Opens an existing database for reading only (the console): nothing
    /// is created, migrated or written; a busy database fails after
    /// `mctc_service::sqlite::READ_BUSY_TIMEOUT`. Any [`Store`] method that
    /// writes fails on it with [`super::Fault::ReadOnly`].
    pub fn open_read_only(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = mctc_service::sqlite::open_read_only(path, &schema::SCHEMA)?;
        Ok(SqliteStore { conn })
    }

    /// One page of devices in id order after `query.after` (keyset
    /// paging: the cost does not grow with the page number), filtered by
    /// standing and id prefix.
    pub fn devices_page(&mut self, query: &DeviceQuery) -> Result<Vec<DeviceRecord>, StoreError> {
        read::devices_page(&self.conn, query)
    }

    /// How many devices have each standing (one indexed scan, no rows
    /// decoded).
    pub fn status_counts(&mut self) -> Result<StatusCounts, StoreError> {
        read::status_counts(&self.conn)
    }
}

impl From<OpenError> for StoreError {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::TooNew { found, supported } => StoreError::TooNew { found, supported },
            OpenError::Sqlite { fault, source } => StoreError::Backend {
                fault,
                source: Box::new(source),
            },
            e @ (OpenError::Create { .. }
            | OpenError::NotWal { .. }
            | OpenError::NotCurrent { .. }) => StoreError::Unusable(e.to_string()),
        }
    }
}

impl Store for SqliteStore {
    fn add_device(&mut self, device: &NewDevice, now: &Now) -> Result<bool, StoreError> {
        devices::add_device(&mut self.conn, device, now)
    }

    fn device(&mut self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        devices::device(&mut self.conn, id)
    }

    fn devices(&mut self) -> Result<Vec<DeviceRecord>, StoreError> {
        devices::devices(&mut self.conn)
    }

    fn change_status(
        &mut self,
        id: &DeviceId,
        change: StatusChange,
        reason: &str,
        now: &Now,
    ) -> Result<StatusOutcome, StoreError> {
        devices::change_status(&mut self.conn, id, change, reason, now)
    }

    fn begin_enrollment(&mut self, p: &PendingEnrollment) -> Result<(), StoreError> {
        enrollment::begin_enrollment(&mut self.conn, p)
    }

    fn take_enrollment(
        &mut self,
        device: &DeviceId,
        request_id: &[u8; 16],
        now: &Now,
    ) -> Result<Option<PendingEnrollment>, StoreError> {
        enrollment::take_enrollment(&mut self.conn, device, request_id, now)
    }

    fn commit_enrollment(
        &mut self,
        p: &PendingEnrollment,
        now: &Now,
    ) -> Result<EnrollCommit, StoreError> {
        enrollment::commit_enrollment(&mut self.conn, p, now)
    }

    fn issue_nonce(
        &mut self,
        device: &DeviceId,
        nonce: &[u8; 32],
        purpose: NoncePurpose,
        deadline: &Deadline,
        max_outstanding: u32,
        now: &Now,
    ) -> Result<NonceGrant, StoreError> {
        evidence::issue_nonce(
            &mut self.conn,
            device,
            nonce,
            purpose,
            deadline,
            max_outstanding,
            now,
        )
    }

    fn attest(
        &mut self,
        device: &DeviceId,
        nonce: &[u8; 32],
        issue: &Issue,
        now: &Now,
        decide: &mut dyn FnMut(&DeviceRecord, NonceCheck, &ClassBaseline) -> Decision,
    ) -> Result<Option<Attested>, StoreError> {
        evidence::attest(&mut self.conn, device, nonce, issue, now, decide)
    }

    fn heartbeat(
        &mut self,
        holder: &str,
        lease_ms: u64,
        max_revoked: usize,
        now: &Now,
    ) -> Result<Option<HeartbeatState>, StoreError> {
        fleet::heartbeat(&mut self.conn, holder, lease_ms, max_revoked, now)
    }

    fn release_lease(&mut self, holder: &str) -> Result<(), StoreError> {
        fleet::release_lease(&mut self.conn, holder)
    }

    fn fleet(&mut self) -> Result<FleetState, StoreError> {
        fleet::fleet(&mut self.conn)
    }

    fn outbox_depth(&mut self) -> Result<u64, StoreError> {
        outbox::depth(&self.conn)
    }

    fn claim_outbox(
        &mut self,
        limit: usize,
        claim_ms: u64,
        now: &Now,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        outbox::claim_outbox(&mut self.conn, limit, claim_ms, now)
    }

    fn requeue_latest_controls(&mut self, now: &Now) -> Result<usize, StoreError> {
        outbox::requeue_latest_controls(&mut self.conn, now)
    }

    fn ack_outbox(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        outbox::ack_outbox(&mut self.conn, ids)
    }

    fn baseline(&mut self, class: &str) -> Result<ClassBaseline, StoreError> {
        baselines::baseline(&mut self.conn, class)
    }

    fn learn(
        &mut self,
        seen: &ClassBaseline,
        class: &str,
        values: &[(u8, [u8; 32])],
        from: &DeviceId,
        mode: LearnMode,
        now: &Now,
    ) -> Result<bool, StoreError> {
        baselines::learn(&mut self.conn, seen, class, values, from, mode, now)
    }

    fn forget(
        &mut self,
        seen: &ClassBaseline,
        class: &str,
        forget: &Forget,
    ) -> Result<Option<usize>, StoreError> {
        baselines::forget(&mut self.conn, seen, class, forget)
    }

    fn start_stage(
        &mut self,
        seen: &ClassBaseline,
        stage: &NewStage,
        now: &Now,
    ) -> Result<Option<Stage>, StoreError> {
        baselines::start_stage(&mut self.conn, seen, stage, now)
    }

    fn promote_stage(
        &mut self,
        seen: &ClassBaseline,
        class: &str,
        promotion: Promotion,
        now: &Now,
    ) -> Result<Option<Stage>, StoreError> {
        baselines::promote_stage(&mut self.conn, seen, class, promotion, now)
    }

    fn roll_back_stage(
        &mut self,
        seen: &ClassBaseline,
        class: &str,
        reason: &str,
        now: &Now,
    ) -> Result<Option<Stage>, StoreError> {
        baselines::roll_back_stage(&mut self.conn, seen, class, reason, now)
    }

    fn sweep(&mut self, now: &Now) -> Result<usize, StoreError> {
        evidence::sweep(&mut self.conn, now)
    }
}

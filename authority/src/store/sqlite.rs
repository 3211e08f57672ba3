//! The embedded store: SQLite through the system libsqlite3.
//!
//! WAL (readers never block the writer), `synchronous=FULL` (a committed
//! nonce or revocation survives power loss), a busy timeout (several
//! processes share the file), `PRAGMA user_version` as the schema version.
//! Every write is one `BEGIN IMMEDIATE` transaction: it takes the write lock
//! up front, so two processes never both read-then-write the same state
//! (no lost update, no double use of a nonce).

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use mctc_attest::ClockInfo;
use mctc_shim::DeviceId;
use mctc_shim::messages::{ControlAction, DeviceStatus, NoncePurpose};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};

use super::{
    Attested, DeviceRecord, EnrollCommit, Enrolled, FleetState, HeartbeatState, Issue, NewDevice,
    NonceGrant, OutboxItem, PcrSnapshot, PendingEnrollment, RegistryRow, StatusChange,
    StatusOutcome, Store, StoreError, Verdict,
};
use crate::model::{Decision, LearnedDigest, NonceCheck, Refusal, VerifiedFacts};
use crate::now::{Deadline, Now};

/// How long a writer waits for another process's transaction.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const HEARTBEAT_LEASE: &str = "heartbeat";
const OUTBOX_CONTROL: i64 = 1;
const OUTBOX_REGISTRY: i64 = 2;
/// The device's rights on the broker, built from its current status: granted
/// while it is active or contained, taken once it is revoked.
const OUTBOX_BROKER: i64 = 3;

/// Schema migrations; `MIGRATIONS[i]` takes version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE devices (
    id TEXT PRIMARY KEY NOT NULL,
    class TEXT NOT NULL,
    status INTEGER NOT NULL CHECK (status IN (1, 2, 3)),
    reason TEXT,
    pinned_ek_sha256 BLOB CHECK (pinned_ek_sha256 IS NULL OR length(pinned_ek_sha256) = 32),
    ek_public BLOB,
    ek_sha256 BLOB CHECK (ek_sha256 IS NULL OR length(ek_sha256) = 32),
    ak_public BLOB,
    ak_name BLOB,
    added_ms INTEGER NOT NULL,
    enrolled_ms INTEGER,
    control_seq INTEGER NOT NULL DEFAULT 0,
    registry_version INTEGER NOT NULL DEFAULT 0,
    clock INTEGER,
    reset_count INTEGER,
    restart_count INTEGER,
    clock_safe INTEGER,
    pcr_mask INTEGER,
    pcr_values BLOB,
    verified_ms INTEGER,
    attempt_ms INTEGER,
    verdict TEXT,
    refusal TEXT,
    artifacts_issued INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE nonces (
    nonce BLOB PRIMARY KEY NOT NULL CHECK (length(nonce) = 32),
    device TEXT NOT NULL,
    purpose INTEGER NOT NULL,
    boot_id TEXT NOT NULL,
    deadline_ms INTEGER NOT NULL,
    issued_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX nonces_by_device ON nonces (device, issued_ms);

CREATE TABLE enrollments (
    device TEXT PRIMARY KEY NOT NULL,
    request_id BLOB NOT NULL CHECK (length(request_id) = 16),
    class TEXT NOT NULL,
    first_use INTEGER NOT NULL,
    proof BLOB NOT NULL CHECK (length(proof) = 32),
    ek_public BLOB NOT NULL,
    ek_sha256 BLOB NOT NULL CHECK (length(ek_sha256) = 32),
    ak_public BLOB NOT NULL,
    ak_name BLOB NOT NULL,
    boot_id TEXT NOT NULL,
    deadline_ms INTEGER NOT NULL
) STRICT;

CREATE TABLE fleet (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    hb_seq INTEGER NOT NULL,
    epoch INTEGER NOT NULL
) STRICT;
INSERT INTO fleet (id, hb_seq, epoch) VALUES (1, 0, 0);

CREATE TABLE revocations (
    epoch INTEGER PRIMARY KEY NOT NULL,
    device TEXT NOT NULL,
    wall_ms INTEGER NOT NULL,
    reason TEXT NOT NULL
) STRICT;

CREATE TABLE baselines (
    class TEXT NOT NULL,
    pcr INTEGER NOT NULL CHECK (pcr BETWEEN 0 AND 23),
    digest BLOB NOT NULL CHECK (length(digest) = 32),
    learned_from TEXT NOT NULL,
    learned_ms INTEGER NOT NULL,
    PRIMARY KEY (class, pcr, digest)
) STRICT;

CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind INTEGER NOT NULL,
    device TEXT NOT NULL,
    action INTEGER,
    seq INTEGER,
    reason TEXT,
    wall_ms INTEGER NOT NULL,
    claim_boot_id TEXT,
    claim_until_ms INTEGER
) STRICT;

CREATE TABLE leases (
    name TEXT PRIMARY KEY NOT NULL,
    holder TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    until_ms INTEGER NOT NULL
) STRICT;
"#,
    // Version 2: the broker authorizes each device by a role of its own
    // (the dynamic-security plugin); every device already known gets its
    // rights (or, if revoked, loses them) on the first run after the upgrade.
    r#"
INSERT INTO outbox (kind, device, wall_ms) SELECT 3, id, added_ms FROM devices;
"#,
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

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
    /// Opens (creating, mode 0600) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        // SQLite would create the file with the umask's mode; the database
        // holds pending proofs and nonces, so it is made private first. Only
        // a *new* file is opened here (O_EXCL): closing any descriptor of a
        // database file drops every POSIX lock this process holds on it,
        // including those of another open connection, after which another
        // process may checkpoint and delete the WAL under that connection
        // (its later commits would be lost).
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(StoreError::Unusable(format!("cannot create the file: {e}")));
            }
        }
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unusable(format!(
                "journal_mode stays {mode}; WAL is required (is the file on a network filesystem?)"
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(SqliteStore { conn })
    }

    fn immediate(&mut self) -> Result<Transaction<'_>, StoreError> {
        Ok(self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?)
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (version, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(found).unwrap_or(0))
    {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version as i64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}

const DEVICE_COLUMNS: &str = "id, class, status, reason, pinned_ek_sha256, ek_public, ek_sha256, \
    ak_public, ak_name, added_ms, enrolled_ms, control_seq, registry_version, clock, reset_count, \
    restart_count, clock_safe, pcr_mask, pcr_values, verified_ms, attempt_ms, verdict, refusal, \
    artifacts_issued";

/// A devices row as stored, before its values are checked.
struct RawDevice {
    id: String,
    class: String,
    status: u8,
    reason: Option<String>,
    pinned: Option<Vec<u8>>,
    ek_public: Option<Vec<u8>>,
    ek_sha256: Option<Vec<u8>>,
    ak_public: Option<Vec<u8>>,
    ak_name: Option<Vec<u8>>,
    added_ms: u64,
    enrolled_ms: Option<u64>,
    control_seq: u64,
    registry_version: u64,
    clock: Option<u64>,
    reset_count: Option<u32>,
    restart_count: Option<u32>,
    clock_safe: Option<bool>,
    pcr_mask: Option<u32>,
    pcr_values: Option<Vec<u8>>,
    verified_ms: Option<u64>,
    attempt_ms: Option<u64>,
    verdict: Option<String>,
    refusal: Option<String>,
    artifacts_issued: u64,
}

impl RawDevice {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<RawDevice> {
        Ok(RawDevice {
            id: r.get(0)?,
            class: r.get(1)?,
            status: r.get(2)?,
            reason: r.get(3)?,
            pinned: r.get(4)?,
            ek_public: r.get(5)?,
            ek_sha256: r.get(6)?,
            ak_public: r.get(7)?,
            ak_name: r.get(8)?,
            added_ms: r.get(9)?,
            enrolled_ms: r.get(10)?,
            control_seq: r.get(11)?,
            registry_version: r.get(12)?,
            clock: r.get(13)?,
            reset_count: r.get(14)?,
            restart_count: r.get(15)?,
            clock_safe: r.get(16)?,
            pcr_mask: r.get(17)?,
            pcr_values: r.get(18)?,
            verified_ms: r.get(19)?,
            attempt_ms: r.get(20)?,
            verdict: r.get(21)?,
            refusal: r.get(22)?,
            artifacts_issued: r.get(23)?,
        })
    }

    fn check(self) -> Result<DeviceRecord, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("device {}: {what}", self.id));
        let id = DeviceId::new(&self.id).map_err(|_| corrupt("invalid id"))?;
        let status = DeviceStatus::from_code(self.status).ok_or_else(|| corrupt("status"))?;
        let pinned = self
            .pinned
            .as_deref()
            .map(digest)
            .transpose()
            .map_err(|()| corrupt("pinned EK hash"))?;
        let enrolled = match (
            self.ek_public,
            self.ek_sha256,
            self.ak_public,
            self.ak_name,
            self.enrolled_ms,
        ) {
            (Some(ek_public), Some(ek_sha256), Some(ak_public), Some(ak_name), Some(at_ms)) => {
                Some(Enrolled {
                    ek_public,
                    ek_sha256: digest(&ek_sha256).map_err(|()| corrupt("EK hash"))?,
                    ak_public,
                    ak_name,
                    at_ms,
                })
            }
            (None, None, None, None, None) => None,
            _ => return Err(corrupt("partial enrollment")),
        };
        let last_clock = match (
            self.clock,
            self.reset_count,
            self.restart_count,
            self.clock_safe,
        ) {
            (Some(clock), Some(reset_count), Some(restart_count), Some(safe)) => Some(ClockInfo {
                clock,
                reset_count,
                restart_count,
                safe,
            }),
            (None, None, None, None) => None,
            _ => return Err(corrupt("partial clock")),
        };
        let last_pcrs = match (self.pcr_mask, self.pcr_values) {
            (Some(mask), Some(values)) => {
                let values: Vec<[u8; 32]> = values
                    .chunks(32)
                    .map(digest)
                    .collect::<Result<_, ()>>()
                    .map_err(|()| corrupt("PCR values"))?;
                if values.len() != mask.count_ones() as usize {
                    return Err(corrupt("PCR value count"));
                }
                Some(PcrSnapshot { mask, values })
            }
            (None, None) => None,
            _ => return Err(corrupt("partial PCR values")),
        };
        let verdict = match self.verdict.as_deref() {
            None => None,
            Some("affirmed") => Some(Verdict::Affirmed),
            Some("refused") => Some(Verdict::Refused),
            Some(_) => return Err(corrupt("verdict")),
        };
        let refusal = self
            .refusal
            .as_deref()
            .map(|name| Refusal::from_name(name).ok_or_else(|| corrupt("refusal")))
            .transpose()?;
        Ok(DeviceRecord {
            id,
            class: self.class,
            status,
            reason: self.reason,
            pinned_ek_sha256: pinned,
            enrolled,
            added_ms: self.added_ms,
            control_seq: self.control_seq,
            registry_version: self.registry_version,
            last_clock,
            last_pcrs,
            verified_ms: self.verified_ms,
            attempt_ms: self.attempt_ms,
            verdict,
            refusal,
            artifacts_issued: self.artifacts_issued,
        })
    }
}

fn digest(bytes: &[u8]) -> Result<[u8; 32], ()> {
    <[u8; 32]>::try_from(bytes).map_err(|_| ())
}

fn load_device(conn: &Connection, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?1"
    ))?
    .query_row([id], RawDevice::from_row)
    .optional()?
    .map(RawDevice::check)
    .transpose()
}

fn load_fleet(conn: &Connection) -> Result<FleetState, StoreError> {
    Ok(
        conn.query_row("SELECT hb_seq, epoch FROM fleet WHERE id = 1", [], |r| {
            Ok(FleetState {
                hb_seq: r.get(0)?,
                epoch: r.get(1)?,
            })
        })?,
    )
}

fn load_learned(conn: &Connection, class: &str) -> Result<Vec<LearnedDigest>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT pcr, digest, learned_from, learned_ms FROM baselines WHERE class = ?1 ORDER BY pcr, digest",
    )?;
    let rows = stmt.query_map([class], |r| {
        Ok((
            r.get::<_, u8>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, u64>(3)?,
        ))
    })?;
    let mut learned = Vec::new();
    for row in rows {
        let (pcr, bytes, from, at_ms) = row?;
        learned.push(LearnedDigest {
            pcr,
            digest: digest(&bytes)
                .map_err(|()| StoreError::Corrupt(format!("baseline of class {class}")))?,
            from,
            at_ms,
        });
    }
    Ok(learned)
}

fn insert_nonce(
    tx: &Transaction<'_>,
    device: &str,
    nonce: &[u8; 32],
    purpose: NoncePurpose,
    deadline: &Deadline,
    max_outstanding: u32,
    now: &Now,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO nonces (nonce, device, purpose, boot_id, deadline_ms, issued_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        &nonce[..],
        device,
        purpose.code(),
        deadline.boot_id,
        deadline.boot_ms,
        now.boot_ms
    ])?;
    // A device asking again and again keeps only its newest nonces: the
    // table cannot grow without bound, whatever a device does.
    tx.prepare_cached(
        "DELETE FROM nonces WHERE device = ?1 AND rowid NOT IN \
         (SELECT rowid FROM nonces WHERE device = ?1 ORDER BY issued_ms DESC, rowid DESC LIMIT ?2)",
    )?
    .execute(params![device, max_outstanding])?;
    Ok(())
}

fn store_facts(
    tx: &Transaction<'_>,
    device: &str,
    facts: &VerifiedFacts,
    now: &Now,
) -> Result<(), StoreError> {
    let values: Vec<u8> = facts.values.iter().flatten().copied().collect();
    tx.prepare_cached(
        "UPDATE devices SET clock = ?2, reset_count = ?3, restart_count = ?4, clock_safe = ?5, \
         pcr_mask = ?6, pcr_values = ?7, verified_ms = ?8 WHERE id = ?1",
    )?
    .execute(params![
        device,
        facts.high_water.clock,
        facts.high_water.reset_count,
        facts.high_water.restart_count,
        facts.high_water.safe,
        facts.mask,
        values,
        now.wall_ms
    ])?;
    Ok(())
}

/// Queues a control message and (for an enrolled device) its registry
/// record; bumps the per-device counters. Returns the control's seq.
fn queue_control(
    tx: &Transaction<'_>,
    device: &DeviceRecord,
    action: ControlAction,
    reason: &str,
    now: &Now,
) -> Result<u64, StoreError> {
    let enrolled = device.enrolled.is_some();
    let seq: u64 = tx.query_row(
        "UPDATE devices SET control_seq = control_seq + 1, \
         registry_version = registry_version + ?2 WHERE id = ?1 RETURNING control_seq",
        params![device.id.as_str(), i64::from(enrolled)],
        |r| r.get(0),
    )?;
    tx.execute(
        "INSERT INTO outbox (kind, device, action, seq, reason, wall_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            OUTBOX_CONTROL,
            device.id.as_str(),
            action.code(),
            seq,
            reason,
            now.wall_ms
        ],
    )?;
    if enrolled {
        queue_registry(tx, device.id.as_str(), now)?;
    }
    Ok(seq)
}

fn queue_broker(tx: &Transaction<'_>, device: &str, now: &Now) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO outbox (kind, device, wall_ms) VALUES (?1, ?2, ?3)",
        params![OUTBOX_BROKER, device, now.wall_ms],
    )?;
    Ok(())
}

fn queue_registry(tx: &Transaction<'_>, device: &str, now: &Now) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO outbox (kind, device, wall_ms) VALUES (?1, ?2, ?3)",
        params![OUTBOX_REGISTRY, device, now.wall_ms],
    )?;
    Ok(())
}

impl Store for SqliteStore {
    fn add_device(&mut self, device: &NewDevice, now: &Now) -> Result<bool, StoreError> {
        let tx = self.immediate()?;
        let added = tx.execute(
            "INSERT INTO devices (id, class, status, pinned_ek_sha256, added_ms) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (id) DO NOTHING",
            params![
                device.id.as_str(),
                device.class,
                DeviceStatus::Active.code(),
                device.pinned_ek_sha256.as_ref().map(|d| &d[..]),
                now.wall_ms
            ],
        )?;
        if added == 1 {
            queue_broker(&tx, device.id.as_str(), now)?;
        }
        tx.commit()?;
        Ok(added == 1)
    }

    fn device(&mut self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        load_device(&self.conn, id.as_str())
    }

    fn devices(&mut self) -> Result<Vec<DeviceRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY id"))?;
        let rows = stmt.query_map([], RawDevice::from_row)?;
        let mut devices = Vec::new();
        for row in rows {
            devices.push(row?.check()?);
        }
        Ok(devices)
    }

    fn change_status(
        &mut self,
        id: &DeviceId,
        change: StatusChange,
        reason: &str,
        now: &Now,
    ) -> Result<StatusOutcome, StoreError> {
        let tx = self.immediate()?;
        let Some(device) = load_device(&tx, id.as_str())? else {
            return Ok(StatusOutcome::NotFound);
        };
        use DeviceStatus::{Active, Contained, Revoked};
        let target = match (change, device.status) {
            (StatusChange::Contain, Contained) | (StatusChange::Revoke, Revoked) => {
                return Ok(StatusOutcome::Unchanged(device.status));
            }
            (StatusChange::Contain, Revoked) | (StatusChange::Restore, Active | Revoked) => {
                return Ok(StatusOutcome::Refused(device.status));
            }
            (StatusChange::Contain, Active) => Contained,
            (StatusChange::Restore, Contained) => Active,
            (StatusChange::Revoke, Active | Contained) => Revoked,
        };
        tx.execute(
            "UPDATE devices SET status = ?2, reason = ?3 WHERE id = ?1",
            params![
                id.as_str(),
                target.code(),
                (target != Active).then_some(reason)
            ],
        )?;
        if target == Revoked {
            let epoch: u64 = tx.query_row(
                "UPDATE fleet SET epoch = epoch + 1 WHERE id = 1 RETURNING epoch",
                [],
                |r| r.get(0),
            )?;
            tx.execute(
                "INSERT INTO revocations (epoch, device, wall_ms, reason) VALUES (?1, ?2, ?3, ?4)",
                params![epoch, id.as_str(), now.wall_ms, reason],
            )?;
        }
        let control_seq = queue_control(&tx, &device, change.action(), reason, now)?;
        if target == Revoked {
            // After the control, so the device is told before it is cut off.
            queue_broker(&tx, id.as_str(), now)?;
        }
        tx.commit()?;
        Ok(StatusOutcome::Changed {
            status: target,
            control_seq,
        })
    }

    fn begin_enrollment(&mut self, p: &PendingEnrollment) -> Result<(), StoreError> {
        let tx = self.immediate()?;
        tx.execute(
            "INSERT OR REPLACE INTO enrollments (device, request_id, class, first_use, proof, ek_public, \
             ek_sha256, ak_public, ak_name, boot_id, deadline_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                p.device.as_str(),
                &p.request_id[..],
                p.class,
                p.first_use,
                &p.proof[..],
                p.ek_public,
                &p.ek_sha256[..],
                p.ak_public,
                p.ak_name,
                p.deadline.boot_id,
                p.deadline.boot_ms
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn take_enrollment(
        &mut self,
        device: &DeviceId,
        request_id: &[u8; 16],
        now: &Now,
    ) -> Result<Option<PendingEnrollment>, StoreError> {
        let tx = self.immediate()?;
        let row = tx
            .query_row(
                "DELETE FROM enrollments WHERE device = ?1 AND request_id = ?2 RETURNING class, first_use, \
                 proof, ek_public, ek_sha256, ak_public, ak_name, boot_id, deadline_ms",
                params![device.as_str(), &request_id[..]],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, bool>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                        r.get::<_, Vec<u8>>(4)?,
                        r.get::<_, Vec<u8>>(5)?,
                        r.get::<_, Vec<u8>>(6)?,
                        r.get::<_, String>(7)?,
                        r.get::<_, u64>(8)?,
                    ))
                },
            )
            .optional()?;
        tx.commit()?;
        let Some((class, first_use, proof, ek_public, ek_sha256, ak_public, ak_name, boot_id, ms)) =
            row
        else {
            return Ok(None);
        };
        let deadline = Deadline {
            boot_id,
            boot_ms: ms,
        };
        if !deadline.is_ahead(now) {
            return Ok(None);
        }
        let corrupt = || StoreError::Corrupt(format!("enrollment of {device}"));
        Ok(Some(PendingEnrollment {
            device: device.clone(),
            request_id: *request_id,
            class,
            first_use,
            proof: digest(&proof).map_err(|()| corrupt())?,
            ek_public,
            ek_sha256: digest(&ek_sha256).map_err(|()| corrupt())?,
            ak_public,
            ak_name,
            deadline,
        }))
    }

    fn commit_enrollment(
        &mut self,
        p: &PendingEnrollment,
        now: &Now,
    ) -> Result<EnrollCommit, StoreError> {
        let tx = self.immediate()?;
        let id = p.device.as_str();
        let device = match load_device(&tx, id)? {
            Some(device) => device,
            None if p.first_use => {
                tx.execute(
                    "INSERT INTO devices (id, class, status, added_ms) VALUES (?1, ?2, ?3, ?4)",
                    params![id, p.class, DeviceStatus::Active.code(), now.wall_ms],
                )?;
                load_device(&tx, id)?
                    .ok_or_else(|| StoreError::Corrupt(format!("device {id} vanished")))?
            }
            None => return Ok(EnrollCommit::NotAllowed),
        };
        if device.status == DeviceStatus::Revoked {
            return Ok(EnrollCommit::Revoked);
        }
        if device
            .pinned_ek_sha256
            .is_some_and(|pin| pin != p.ek_sha256)
        {
            return Ok(EnrollCommit::BadEk);
        }
        if device
            .enrolled
            .as_ref()
            .is_some_and(|e| e.ek_sha256 != p.ek_sha256)
        {
            return Ok(EnrollCommit::IdentityConflict);
        }
        tx.execute(
            "UPDATE devices SET ek_public = ?2, ek_sha256 = ?3, ak_public = ?4, ak_name = ?5, \
             enrolled_ms = ?6, registry_version = registry_version + 1 WHERE id = ?1",
            params![
                id,
                p.ek_public,
                &p.ek_sha256[..],
                p.ak_public,
                p.ak_name,
                now.wall_ms
            ],
        )?;
        queue_registry(&tx, id, now)?;
        tx.commit()?;
        Ok(EnrollCommit::Enrolled)
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
        let tx = self.immediate()?;
        let row: Option<(u8, bool)> = tx
            .prepare_cached("SELECT status, ak_public IS NOT NULL FROM devices WHERE id = ?1")?
            .query_row([device.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let grant = match row {
            None => NonceGrant::Unknown,
            Some((_, false)) => NonceGrant::NotEnrolled,
            Some((status, true)) => match DeviceStatus::from_code(status) {
                Some(DeviceStatus::Active) => {
                    insert_nonce(
                        &tx,
                        device.as_str(),
                        nonce,
                        purpose,
                        deadline,
                        max_outstanding,
                        now,
                    )?;
                    NonceGrant::Issued
                }
                Some(other) => NonceGrant::NotActive(other),
                None => return Err(StoreError::Corrupt(format!("device {device}: status"))),
            },
        };
        tx.commit()?;
        Ok(grant)
    }

    fn attest(
        &mut self,
        device: &DeviceId,
        nonce: &[u8; 32],
        issue: &Issue,
        now: &Now,
        decide: &mut dyn FnMut(&DeviceRecord, NonceCheck, &[LearnedDigest]) -> Decision,
    ) -> Result<Option<Attested>, StoreError> {
        let tx = self.immediate()?;
        let id = device.as_str();
        // Single use: the nonce is consumed by the transaction that decides
        // its evidence, whatever the decision (affirmed, refused, or a
        // decision that cannot be recorded, below). Only a transaction that
        // fails (the database) leaves it: then nothing was decided and the
        // device may send the same evidence again.
        let consumed: Option<(u8, String, u64)> = tx
            .prepare_cached(
                "DELETE FROM nonces WHERE nonce = ?1 AND device = ?2 RETURNING purpose, boot_id, deadline_ms",
            )?
            .query_row(params![&nonce[..], id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let Some(record) = load_device(&tx, id)? else {
            tx.commit()?;
            return Ok(None);
        };
        let check = match consumed {
            Some((purpose, boot_id, boot_ms)) => {
                if (Deadline { boot_id, boot_ms }).is_ahead(now) {
                    NoncePurpose::from_code(purpose).map_or(NonceCheck::Invalid, NonceCheck::Valid)
                } else {
                    NonceCheck::Invalid
                }
            }
            None => NonceCheck::Invalid,
        };
        let learned = load_learned(&tx, &record.class)?;
        let fleet = load_fleet(&tx)?;
        let decision = decide(&record, check, &learned);
        let mut status = record.status;
        match &decision {
            Decision::Affirm { facts } => {
                // The decision saw the status read in this transaction;
                // an affirmation of anything but an active device is a bug
                // to be refused here, not issued. The nonce stays consumed
                // (committed without anything else): a bug must not make
                // evidence replayable.
                if record.status != DeviceStatus::Active {
                    tx.commit()?;
                    return Err(StoreError::Corrupt(format!(
                        "affirmed a {:?} device {id}",
                        record.status
                    )));
                }
                store_facts(&tx, id, facts, now)?;
                tx.execute(
                    "UPDATE devices SET attempt_ms = ?2, verdict = 'affirmed', refusal = NULL, \
                     artifacts_issued = artifacts_issued + 1 WHERE id = ?1",
                    params![id, now.wall_ms],
                )?;
                insert_nonce(
                    &tx,
                    id,
                    &issue.next_nonce,
                    NoncePurpose::Renew,
                    &issue.next_nonce_deadline,
                    issue.max_outstanding,
                    now,
                )?;
            }
            Decision::Refuse {
                refusal,
                facts,
                contain,
                ..
            } => {
                if let Some(facts) = facts {
                    store_facts(&tx, id, facts, now)?;
                }
                tx.execute(
                    "UPDATE devices SET attempt_ms = ?2, verdict = 'refused', refusal = ?3 WHERE id = ?1",
                    params![id, now.wall_ms, refusal.name()],
                )?;
                if let Some(reason) = contain
                    && record.status == DeviceStatus::Active
                {
                    tx.execute(
                        "UPDATE devices SET status = ?2, reason = ?3 WHERE id = ?1",
                        params![id, DeviceStatus::Contained.code(), reason],
                    )?;
                    queue_control(&tx, &record, ControlAction::Contain, reason, now)?;
                    status = DeviceStatus::Contained;
                }
            }
        }
        tx.commit()?;
        Ok(Some(Attested {
            decision,
            class: record.class,
            fleet,
            status,
        }))
    }

    fn heartbeat(
        &mut self,
        holder: &str,
        lease_ms: u64,
        max_revoked: usize,
        now: &Now,
    ) -> Result<Option<HeartbeatState>, StoreError> {
        let tx = self.immediate()?;
        let lease: Option<(String, String, u64)> = tx
            .query_row(
                "SELECT holder, boot_id, until_ms FROM leases WHERE name = ?1",
                [HEARTBEAT_LEASE],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        if let Some((other, boot_id, boot_ms)) = lease
            && other != holder
            && (Deadline { boot_id, boot_ms }).is_ahead(now)
        {
            tx.commit()?;
            return Ok(None);
        }
        tx.execute(
            "INSERT OR REPLACE INTO leases (name, holder, boot_id, until_ms) VALUES (?1, ?2, ?3, ?4)",
            params![
                HEARTBEAT_LEASE,
                holder,
                now.boot_id,
                now.boot_ms.saturating_add(lease_ms)
            ],
        )?;
        let (seq, epoch): (u64, u64) = tx.query_row(
            "UPDATE fleet SET hb_seq = hb_seq + 1 WHERE id = 1 RETURNING hb_seq, epoch",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut revoked = Vec::new();
        {
            let mut stmt =
                tx.prepare_cached("SELECT device FROM revocations ORDER BY epoch DESC LIMIT ?1")?;
            let rows = stmt.query_map([max_revoked as u64], |r| r.get::<_, String>(0))?;
            for row in rows {
                let id = row?;
                revoked.push(DeviceId::new(&id).map_err(|_| {
                    StoreError::Corrupt(format!("revocation of invalid id {id:?}"))
                })?);
            }
        }
        tx.commit()?;
        // Each epoch is exactly one revocation row, so the newest `n` rows
        // are the epochs `epoch - n + 1 ..= epoch`.
        let since_epoch = epoch.saturating_sub(revoked.len() as u64);
        Ok(Some(HeartbeatState {
            seq,
            epoch,
            since_epoch,
            revoked,
        }))
    }

    fn release_lease(&mut self, holder: &str) -> Result<(), StoreError> {
        let tx = self.immediate()?;
        tx.execute(
            "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
            params![HEARTBEAT_LEASE, holder],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn fleet(&mut self) -> Result<FleetState, StoreError> {
        load_fleet(&self.conn)
    }

    fn claim_outbox(
        &mut self,
        limit: usize,
        claim_ms: u64,
        now: &Now,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let tx = self.immediate()?;
        type Row = (
            i64,
            i64,
            String,
            Option<u8>,
            Option<u64>,
            Option<String>,
            u64,
        );
        let rows: Vec<Row> = {
            let mut stmt = tx.prepare_cached(
                "SELECT id, kind, device, action, seq, reason, wall_ms FROM outbox \
                 WHERE claim_boot_id IS NULL OR claim_boot_id != ?1 OR claim_until_ms <= ?2 \
                 ORDER BY id LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![now.boot_id, now.boot_ms, limit as u64], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let mut items = Vec::with_capacity(rows.len());
        for (id, kind, device, action, seq, reason, wall_ms) in rows {
            tx.prepare_cached(
                "UPDATE outbox SET claim_boot_id = ?2, claim_until_ms = ?3 WHERE id = ?1",
            )?
            .execute(params![
                id,
                now.boot_id,
                now.boot_ms.saturating_add(claim_ms)
            ])?;
            let corrupt = || StoreError::Corrupt(format!("outbox row {id}"));
            let device_id = DeviceId::new(&device).map_err(|_| corrupt())?;
            let item = match kind {
                OUTBOX_CONTROL => OutboxItem::Control {
                    id,
                    device: device_id,
                    seq: seq.ok_or_else(corrupt)?,
                    action: action
                        .and_then(ControlAction::from_code)
                        .ok_or_else(corrupt)?,
                    reason: reason.unwrap_or_default(),
                    wall_ms,
                },
                OUTBOX_REGISTRY => match load_device(&tx, &device)? {
                    Some(DeviceRecord {
                        id: device,
                        class,
                        status,
                        enrolled: Some(e),
                        registry_version,
                        ..
                    }) => OutboxItem::Registry {
                        id,
                        record: RegistryRow {
                            device,
                            class,
                            ak_public: e.ak_public,
                            ak_name: e.ak_name,
                            ek_sha256: e.ek_sha256,
                            status,
                            version: registry_version,
                        },
                    },
                    _ => OutboxItem::Skip { id },
                },
                OUTBOX_BROKER => OutboxItem::Broker {
                    id,
                    grant: load_device(&tx, &device)?
                        .is_some_and(|d| d.status != DeviceStatus::Revoked),
                    device: device_id,
                },
                _ => return Err(corrupt()),
            };
            items.push(item);
        }
        tx.commit()?;
        Ok(items)
    }

    fn requeue_latest_controls(&mut self, now: &Now) -> Result<usize, StoreError> {
        let tx = self.immediate()?;
        // The latest control follows from the status it produced: contained
        // ← contain, revoked ← revoke, active (with a control) ← restore.
        let queued = tx.execute(
            "INSERT INTO outbox (kind, device, action, seq, reason, wall_ms) \
             SELECT ?1, id, CASE status WHEN ?2 THEN ?3 WHEN ?4 THEN ?5 ELSE ?6 END, \
                    control_seq, COALESCE(reason, ''), ?7 \
             FROM devices WHERE control_seq > 0",
            params![
                OUTBOX_CONTROL,
                DeviceStatus::Contained.code(),
                ControlAction::Contain.code(),
                DeviceStatus::Revoked.code(),
                ControlAction::Revoke.code(),
                ControlAction::Restore.code(),
                now.wall_ms
            ],
        )?;
        tx.commit()?;
        Ok(queued)
    }

    fn ack_outbox(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let tx = self.immediate()?;
        for id in ids {
            tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
                .execute([id])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn learned(&mut self, class: &str) -> Result<Vec<LearnedDigest>, StoreError> {
        load_learned(&self.conn, class)
    }

    fn learn(
        &mut self,
        class: &str,
        values: &[(u8, [u8; 32])],
        from: &DeviceId,
        now: &Now,
    ) -> Result<(), StoreError> {
        let tx = self.immediate()?;
        for (pcr, value) in values {
            tx.execute(
                "DELETE FROM baselines WHERE class = ?1 AND pcr = ?2",
                params![class, pcr],
            )?;
            tx.execute(
                "INSERT INTO baselines (class, pcr, digest, learned_from, learned_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![class, pcr, &value[..], from.as_str(), now.wall_ms],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn sweep(&mut self, now: &Now) -> Result<usize, StoreError> {
        let tx = self.immediate()?;
        let mut removed = 0;
        for table in ["nonces", "enrollments"] {
            removed += tx.execute(
                &format!("DELETE FROM {table} WHERE boot_id != ?1 OR deadline_ms <= ?2"),
                params![now.boot_id, now.boot_ms],
            )?;
        }
        tx.commit()?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Arc, Barrier};

    use super::*;
    use crate::model::NonceCheck;

    fn now_at(boot_ms: u64) -> Now {
        Now {
            wall_ms: 1_700_000_000_000 + boot_ms,
            boot_ms,
            boot_id: "boot-a".into(),
        }
    }

    fn id(s: &str) -> DeviceId {
        DeviceId::new(s).unwrap()
    }

    fn open(dir: &tempfile::TempDir) -> SqliteStore {
        SqliteStore::open(&dir.path().join("a.db")).unwrap()
    }

    fn enrolled_device(store: &mut SqliteStore, name: &str, now: &Now) {
        assert!(
            store
                .add_device(
                    &NewDevice {
                        id: id(name),
                        class: "c".into(),
                        pinned_ek_sha256: None,
                    },
                    now,
                )
                .unwrap()
        );
        let pending = pending(name, [1; 16], [0xee; 32], now);
        store.begin_enrollment(&pending).unwrap();
        let taken = store
            .take_enrollment(&id(name), &[1; 16], now)
            .unwrap()
            .unwrap();
        assert_eq!(
            store.commit_enrollment(&taken, now).unwrap(),
            EnrollCommit::Enrolled
        );
    }

    fn pending(name: &str, request_id: [u8; 16], ek: [u8; 32], now: &Now) -> PendingEnrollment {
        PendingEnrollment {
            device: id(name),
            request_id,
            class: "c".into(),
            first_use: false,
            proof: [9; 32],
            ek_public: vec![1],
            ek_sha256: ek,
            ak_public: vec![2],
            ak_name: vec![3],
            deadline: now.after(1000),
        }
    }

    fn issue(now: &Now) -> Issue {
        Issue {
            next_nonce: [0x55; 32],
            next_nonce_deadline: now.after(60_000),
            max_outstanding: 8,
        }
    }

    fn refuse() -> Decision {
        Decision::Refuse {
            refusal: Refusal::BadEvidence,
            detail: String::new(),
            facts: None,
            contain: None,
        }
    }

    #[test]
    fn the_file_is_private_and_the_schema_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        drop(SqliteStore::open(&path).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Reopening migrates nothing and keeps the data.
        let mut store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.fleet().unwrap(), FleetState::default());
        store
            .conn
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(store);
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
    }

    #[test]
    fn a_nonce_is_used_once_even_by_racing_connections() {
        let dir = tempfile::tempdir().unwrap();
        let now = now_at(1000);
        let mut store = open(&dir);
        enrolled_device(&mut store, "d1", &now);
        let nonces: Vec<[u8; 32]> = (0..40u8).map(|i| [i; 32]).collect();
        for n in &nonces {
            let grant = store
                .issue_nonce(
                    &id("d1"),
                    n,
                    NoncePurpose::Renew,
                    &now.after(60_000),
                    64,
                    &now,
                )
                .unwrap();
            assert_eq!(grant, NonceGrant::Issued);
        }
        let barrier = Arc::new(Barrier::new(2));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let path = dir.path().join("a.db");
                let nonces = nonces.clone();
                let barrier = Arc::clone(&barrier);
                let now = now.clone();
                std::thread::spawn(move || {
                    let mut store = SqliteStore::open(&path).unwrap();
                    barrier.wait();
                    let mut valid = 0;
                    for n in &nonces {
                        store
                            .attest(&id("d1"), n, &issue(&now), &now, &mut |_, check, _| {
                                if check != NonceCheck::Invalid {
                                    valid += 1;
                                }
                                refuse()
                            })
                            .unwrap()
                            .unwrap();
                    }
                    valid
                })
            })
            .collect();
        let total: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
        assert_eq!(total, nonces.len(), "every nonce valid exactly once");
    }

    /// A nonce is single use whatever happens to its evidence: an
    /// affirmation the store refuses to record (of a contained device) still
    /// consumes it, so the same evidence cannot be tried again.
    #[test]
    fn a_nonce_is_consumed_even_when_the_decision_is_not_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let now = now_at(1000);
        let mut store = open(&dir);
        enrolled_device(&mut store, "d1", &now);
        let d = id("d1");
        store
            .issue_nonce(&d, &[7; 32], NoncePurpose::Renew, &now.after(100), 8, &now)
            .unwrap();
        store
            .change_status(&d, StatusChange::Contain, "test", &now)
            .unwrap();
        let facts = VerifiedFacts {
            clock: ClockInfo {
                clock: 1,
                reset_count: 1,
                restart_count: 0,
                safe: true,
            },
            high_water: ClockInfo {
                clock: 1,
                reset_count: 1,
                restart_count: 0,
                safe: true,
            },
            mask: 1,
            values: vec![[1; 32]],
            digest: [0; 32],
        };
        let err = store
            .attest(&d, &[7; 32], &issue(&now), &now, &mut |_, check, _| {
                assert_eq!(check, NonceCheck::Valid(NoncePurpose::Renew));
                Decision::Affirm {
                    facts: facts.clone(),
                }
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        // Nothing of the bogus affirmation was recorded...
        let record = store.device(&d).unwrap().unwrap();
        assert_eq!(record.verified_ms, None);
        assert_eq!(record.artifacts_issued, 0);
        // ...but the nonce is gone: the same evidence is stale.
        let mut seen = None;
        store
            .attest(&d, &[7; 32], &issue(&now), &now, &mut |_, check, _| {
                seen = Some(check);
                refuse()
            })
            .unwrap()
            .unwrap();
        assert_eq!(seen, Some(NonceCheck::Invalid));
    }

    #[test]
    fn nonces_expire_die_with_the_boot_and_are_capped_per_device() {
        let dir = tempfile::tempdir().unwrap();
        let now = now_at(1000);
        let mut store = open(&dir);
        enrolled_device(&mut store, "d1", &now);
        let d1 = id("d1");
        let check_of = |store: &mut SqliteStore, n: [u8; 32], at: &Now| {
            let mut seen = None;
            store
                .attest(&d1, &n, &issue(at), at, &mut |_, check, _| {
                    seen = Some(check);
                    refuse()
                })
                .unwrap();
            seen.unwrap()
        };
        store
            .issue_nonce(
                &d1,
                &[1; 32],
                NoncePurpose::FreshOp,
                &now.after(500),
                8,
                &now,
            )
            .unwrap();
        assert_eq!(
            check_of(&mut store, [1; 32], &now_at(1500)),
            NonceCheck::Invalid
        );
        store
            .issue_nonce(
                &d1,
                &[2; 32],
                NoncePurpose::FreshOp,
                &now.after(500),
                8,
                &now,
            )
            .unwrap();
        let other_boot = Now {
            boot_id: "boot-b".into(),
            ..now_at(1001)
        };
        assert_eq!(
            check_of(&mut store, [2; 32], &other_boot),
            NonceCheck::Invalid
        );
        store
            .issue_nonce(
                &d1,
                &[3; 32],
                NoncePurpose::FreshOp,
                &now.after(500),
                8,
                &now,
            )
            .unwrap();
        assert_eq!(
            check_of(&mut store, [3; 32], &now_at(1499)),
            NonceCheck::Valid(NoncePurpose::FreshOp)
        );
        // Cap: the oldest go first.
        for i in 10..20u8 {
            store
                .issue_nonce(
                    &d1,
                    &[i; 32],
                    NoncePurpose::Renew,
                    &now_at(2000 + u64::from(i)).after(9000),
                    3,
                    &now_at(2000 + u64::from(i)),
                )
                .unwrap();
        }
        let left: i64 = store
            .conn
            .query_row("SELECT count(*) FROM nonces", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 3);
        assert_eq!(
            check_of(&mut store, [19; 32], &now_at(2100)),
            NonceCheck::Valid(NoncePurpose::Renew)
        );
        assert_eq!(
            check_of(&mut store, [10; 32], &now_at(2100)),
            NonceCheck::Invalid
        );
        // Another device's nonce is not this device's, and is not burnt.
        enrolled_device(&mut store, "d2", &now);
        assert_eq!(
            store
                .attest(
                    &id("d2"),
                    &[18; 32],
                    &issue(&now),
                    &now_at(2100),
                    &mut |_, c, _| {
                        assert_eq!(c, NonceCheck::Invalid);
                        refuse()
                    }
                )
                .unwrap()
                .map(|a| a.class),
            Some("c".to_owned())
        );
        assert_eq!(
            check_of(&mut store, [18; 32], &now_at(2100)),
            NonceCheck::Valid(NoncePurpose::Renew)
        );
        // Unknown devices: nothing decided.
        assert!(
            store
                .attest(
                    &id("ghost"),
                    &[1; 32],
                    &issue(&now),
                    &now,
                    &mut |_, _, _| refuse()
                )
                .unwrap()
                .is_none()
        );
        assert_eq!(store.sweep(&now_at(1_000_000)).unwrap(), 1);
    }

    #[test]
    fn only_enrolled_active_devices_get_nonces() {
        let dir = tempfile::tempdir().unwrap();
        let now = now_at(1);
        let mut store = open(&dir);
        let d = id("d1");
        let grant = |s: &mut SqliteStore| {
            s.issue_nonce(&d, &[7; 32], NoncePurpose::Renew, &now.after(9), 8, &now)
                .unwrap()
        };
        assert_eq!(grant(&mut store), NonceGrant::Unknown);
        store
            .add_device(
                &NewDevice {
                    id: d.clone(),
                    class: "c".into(),
                    pinned_ek_sha256: None,
                },
                &now,
            )
            .unwrap();
        assert_eq!(grant(&mut store), NonceGrant::NotEnrolled);
        let p = pending("d1", [1; 16], [0xee; 32], &now);
        store.begin_enrollment(&p).unwrap();
        store.commit_enrollment(&p, &now).unwrap();
        store
            .change_status(&d, StatusChange::Contain, "test", &now)
            .unwrap();
        assert_eq!(
            grant(&mut store),
            NonceGrant::NotActive(DeviceStatus::Contained)
        );
    }

    #[test]
    fn enrollment_challenges_are_single_use_and_commit_rechecks() {
        let dir = tempfile::tempdir().unwrap();
        let now = now_at(1000);
        let mut store = open(&dir);
        let d = id("d1");
        // Unknown id, not first use: not allowed.
        let p = pending("d1", [1; 16], [0xaa; 32], &now);
        assert_eq!(
            store.commit_enrollment(&p, &now).unwrap(),
            EnrollCommit::NotAllowed
        );
        // First use inserts the device into the challenge's class.
        let tofu = PendingEnrollment {
            first_use: true,
            ..p.clone()
        };
        store.begin_enrollment(&tofu).unwrap();
        assert!(
            store.take_enrollment(&d, &[2; 16], &now).unwrap().is_none(),
            "wrong attempt id"
        );
        let taken = store.take_enrollment(&d, &[1; 16], &now).unwrap().unwrap();
        assert_eq!(taken, tofu);
        assert!(
            store.take_enrollment(&d, &[1; 16], &now).unwrap().is_none(),
            "single use"
        );
        assert_eq!(
            store.commit_enrollment(&taken, &now).unwrap(),
            EnrollCommit::Enrolled
        );
        let record = store.device(&d).unwrap().unwrap();
        assert_eq!(record.enrolled.as_ref().unwrap().ek_sha256, [0xaa; 32]);
        assert_eq!(record.registry_version, 1);
        // Another EK for the id: conflict. The same EK, new AK: re-enrolls.
        let other = pending("d1", [3; 16], [0xbb; 32], &now);
        assert_eq!(
            store.commit_enrollment(&other, &now).unwrap(),
            EnrollCommit::IdentityConflict
        );
        let new_ak = PendingEnrollment {
            ak_public: vec![0x42],
            ..p.clone()
        };
        assert_eq!(
            store.commit_enrollment(&new_ak, &now).unwrap(),
            EnrollCommit::Enrolled
        );
        assert_eq!(store.device(&d).unwrap().unwrap().registry_version, 2);
        // Expired challenges are gone.
        store.begin_enrollment(&p).unwrap();
        assert!(
            store
                .take_enrollment(&d, &[1; 16], &now_at(2000))
                .unwrap()
                .is_none()
        );
        // Revoked ids never enroll again; pinned EKs are enforced.
        store
            .change_status(&d, StatusChange::Revoke, "stolen", &now)
            .unwrap();
        assert_eq!(
            store.commit_enrollment(&p, &now).unwrap(),
            EnrollCommit::Revoked
        );
        store
            .add_device(
                &NewDevice {
                    id: id("d2"),
                    class: "c".into(),
                    pinned_ek_sha256: Some([0xcc; 32]),
                },
                &now,
            )
            .unwrap();
        assert_eq!(
            store
                .commit_enrollment(&pending("d2", [1; 16], [0xaa; 32], &now), &now)
                .unwrap(),
            EnrollCommit::BadEk
        );
    }

    #[test]
    fn status_changes_queue_controls_and_revocations_raise_the_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let now = now_at(1000);
        let mut store = open(&dir);
        enrolled_device(&mut store, "d1", &now);
        let d = id("d1");
        assert_eq!(
            store
                .change_status(&d, StatusChange::Restore, "r", &now)
                .unwrap(),
            StatusOutcome::Refused(DeviceStatus::Active)
        );
        assert_eq!(
            store
                .change_status(&d, StatusChange::Contain, "look", &now)
                .unwrap(),
            StatusOutcome::Changed {
                status: DeviceStatus::Contained,
                control_seq: 1
            }
        );
        assert_eq!(
            store
                .change_status(&d, StatusChange::Contain, "again", &now)
                .unwrap(),
            StatusOutcome::Unchanged(DeviceStatus::Contained)
        );
        assert_eq!(
            store
                .change_status(&id("nobody"), StatusChange::Contain, "x", &now)
                .unwrap(),
            StatusOutcome::NotFound
        );
        let items = store.claim_outbox(10, 5000, &now).unwrap();
        // The device's broker rights (granted when it was added, and still:
        // a contained device must hear its restore), the enrollment's
        // registry record, then the control and its record.
        assert_eq!(items.len(), 4, "{items:?}");
        assert!(matches!(
            &items[0],
            OutboxItem::Broker { grant: true, device, .. } if *device == d
        ));
        assert!(matches!(
            &items[2],
            OutboxItem::Control { seq: 1, action: ControlAction::Contain, reason, .. } if reason == "look"
        ));
        match &items[3] {
            OutboxItem::Registry { record, .. } => {
                assert_eq!(record.status, DeviceStatus::Contained);
                assert_eq!(record.version, 2);
            }
            other => panic!("{other:?}"),
        }
        // Claimed rows are invisible to others until the claim lapses.
        assert!(store.claim_outbox(10, 5000, &now).unwrap().is_empty());
        assert_eq!(
            store.claim_outbox(10, 5000, &now_at(6000)).unwrap().len(),
            4
        );
        store
            .ack_outbox(&items.iter().map(OutboxItem::id).collect::<Vec<_>>())
            .unwrap();
        assert!(
            store
                .claim_outbox(10, 5000, &now_at(99_000))
                .unwrap()
                .is_empty()
        );

        for i in 0..20 {
            let name = format!("r{i}");
            store
                .add_device(
                    &NewDevice {
                        id: id(&name),
                        class: "c".into(),
                        pinned_ek_sha256: None,
                    },
                    &now,
                )
                .unwrap();
            store
                .change_status(&id(&name), StatusChange::Revoke, "gone", &now)
                .unwrap();
        }
        // Each revoked device: granted when added; after its revocation's
        // control, its rights taken.
        let items = store.claim_outbox(100, 5000, &now_at(99_000)).unwrap();
        let r0: Vec<&OutboxItem> = items
            .iter()
            .filter(|i| match i {
                OutboxItem::Broker { device, .. } | OutboxItem::Control { device, .. } => {
                    *device == id("r0")
                }
                _ => false,
            })
            .collect();
        assert!(
            matches!(
                r0.as_slice(),
                [
                    OutboxItem::Broker { grant: false, .. },
                    OutboxItem::Control {
                        action: ControlAction::Revoke,
                        ..
                    },
                    OutboxItem::Broker { grant: false, .. },
                ]
            ),
            "the rights follow the current status (revoked): {r0:?}"
        );
        assert_eq!(
            store
                .change_status(&id("r0"), StatusChange::Revoke, "again", &now)
                .unwrap(),
            StatusOutcome::Unchanged(DeviceStatus::Revoked)
        );
        assert_eq!(
            store
                .change_status(&id("r0"), StatusChange::Restore, "no", &now)
                .unwrap(),
            StatusOutcome::Refused(DeviceStatus::Revoked)
        );
        let hb = store.heartbeat("me", 1000, 16, &now).unwrap().unwrap();
        assert_eq!(hb.epoch, 20);
        assert_eq!(
            hb.since_epoch, 4,
            "only the 16-entry limit raises since_epoch"
        );
        assert_eq!(hb.revoked.len(), 16);
        assert_eq!(hb.revoked[0], id("r19"));
        assert_eq!(hb.revoked[15], id("r4"));
    }

    #[test]
    fn heartbeat_seq_strictly_increases_across_connections_and_the_lease_moves() {
        let dir = tempfile::tempdir().unwrap();
        let now = now_at(1000);
        let mut a = open(&dir);
        let mut b = open(&dir);
        let first = a.heartbeat("a", 1500, 16, &now).unwrap().unwrap();
        assert_eq!(first.seq, 1);
        assert_eq!(first.since_epoch, 0);
        assert!(first.revoked.is_empty());
        assert!(
            b.heartbeat("b", 1500, 16, &now_at(2000)).unwrap().is_none(),
            "a holds the lease"
        );
        assert_eq!(
            a.heartbeat("a", 1500, 16, &now_at(2000))
                .unwrap()
                .unwrap()
                .seq,
            2
        );
        // a dies: b takes over when the lease lapses.
        assert_eq!(
            b.heartbeat("b", 1500, 16, &now_at(3500))
                .unwrap()
                .unwrap()
                .seq,
            3
        );
        assert!(a.heartbeat("a", 1500, 16, &now_at(3600)).unwrap().is_none());
        // A clean stop hands over at once.
        b.release_lease("b").unwrap();
        assert_eq!(
            a.heartbeat("a", 1500, 16, &now_at(3700))
                .unwrap()
                .unwrap()
                .seq,
            4
        );
        drop((a, b));
        // The high-water mark survives a restart (and a reboot).
        let mut c = open(&dir);
        let other_boot = Now {
            boot_id: "boot-b".into(),
            ..now_at(5)
        };
        assert_eq!(
            c.heartbeat("c", 1500, 16, &other_boot)
                .unwrap()
                .unwrap()
                .seq,
            5
        );
        assert_eq!(c.fleet().unwrap().hb_seq, 5);
    }

    #[test]
    fn drift_contains_in_the_same_transaction_and_affirmations_store_facts() {
        let dir = tempfile::tempdir().unwrap();
        let now = now_at(1000);
        let mut store = open(&dir);
        enrolled_device(&mut store, "d1", &now);
        let d = id("d1");
        let facts = VerifiedFacts {
            clock: ClockInfo {
                clock: 77,
                reset_count: 3,
                restart_count: 1,
                safe: true,
            },
            high_water: ClockInfo {
                clock: 77,
                reset_count: 3,
                restart_count: 1,
                safe: true,
            },
            mask: 0b101,
            values: vec![[1; 32], [2; 32]],
            digest: [0; 32],
        };
        store
            .issue_nonce(&d, &[1; 32], NoncePurpose::Renew, &now.after(100), 8, &now)
            .unwrap();
        let affirmed = store
            .attest(&d, &[1; 32], &issue(&now), &now, &mut |_, check, _| {
                assert_eq!(check, NonceCheck::Valid(NoncePurpose::Renew));
                Decision::Affirm {
                    facts: facts.clone(),
                }
            })
            .unwrap()
            .unwrap();
        assert_eq!(affirmed.status, DeviceStatus::Active);
        let record = store.device(&d).unwrap().unwrap();
        assert_eq!(record.last_clock, Some(facts.clock));
        assert_eq!(record.last_pcrs.as_ref().unwrap().values, facts.values);
        assert_eq!(record.verdict, Some(Verdict::Affirmed));
        assert_eq!(record.artifacts_issued, 1);
        // The next nonce rides in the artifact and is now outstanding.
        let mut next = None;
        store
            .attest(&d, &[0x55; 32], &issue(&now), &now, &mut |_, check, _| {
                next = Some(check);
                Decision::Refuse {
                    refusal: Refusal::PolicyMismatch,
                    detail: "drift".into(),
                    facts: Some(facts.clone()),
                    contain: Some("pcr drift: PCR 2".into()),
                }
            })
            .unwrap();
        assert_eq!(next, Some(NonceCheck::Valid(NoncePurpose::Renew)));
        let record = store.device(&d).unwrap().unwrap();
        assert_eq!(record.status, DeviceStatus::Contained);
        assert_eq!(record.reason.as_deref(), Some("pcr drift: PCR 2"));
        assert_eq!(record.refusal, Some(Refusal::PolicyMismatch));
        assert_eq!(record.control_seq, 1);
        let items = store.claim_outbox(10, 1, &now).unwrap();
        assert!(items.iter().any(|i| matches!(
            i,
            OutboxItem::Control {
                action: ControlAction::Contain,
                ..
            }
        )));
    }

    #[test]
    fn learning_replaces_the_learned_values_of_those_pcrs() {
        let dir = tempfile::tempdir().unwrap();
        let now = now_at(1);
        let mut store = open(&dir);
        store
            .learn("c", &[(0, [1; 32]), (7, [2; 32])], &id("d1"), &now)
            .unwrap();
        store.learn("c", &[(7, [3; 32])], &id("d2"), &now).unwrap();
        let learned = store.learned("c").unwrap();
        assert_eq!(learned.len(), 2);
        assert_eq!(learned[1].digest, [3; 32]);
        assert_eq!(learned[1].from, "d2");
        assert!(store.learned("other").unwrap().is_empty());
    }

    #[test]
    fn the_latest_control_of_each_device_can_be_announced_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir);
        let now = now_at(1000);
        enrolled_device(&mut store, "d1", &now);
        enrolled_device(&mut store, "quiet", &now);
        let d = id("d1");
        let drain = |store: &mut SqliteStore, at: u64| {
            let items = store.claim_outbox(100, 5000, &now_at(at)).unwrap();
            store
                .ack_outbox(&items.iter().map(OutboxItem::id).collect::<Vec<_>>())
                .unwrap();
            items
        };
        drain(&mut store, 1000);
        // Nothing was ever sent to either device: nothing to announce.
        assert_eq!(store.requeue_latest_controls(&now).unwrap(), 0);

        let steps = [
            (StatusChange::Contain, ControlAction::Contain, 1),
            (StatusChange::Restore, ControlAction::Restore, 2),
            (StatusChange::Revoke, ControlAction::Revoke, 3),
        ];
        for (i, (change, action, seq)) in steps.into_iter().enumerate() {
            let at = 2000 + 1000 * i as u64;
            store.change_status(&d, change, "why", &now_at(at)).unwrap();
            drain(&mut store, at);
            assert_eq!(store.requeue_latest_controls(&now_at(at)).unwrap(), 1);
            let again = drain(&mut store, at);
            assert!(
                matches!(
                    again.as_slice(),
                    [OutboxItem::Control { seq: s, action: a, .. }] if *s == seq && *a == action
                ),
                "{again:?}"
            );
        }
    }
}

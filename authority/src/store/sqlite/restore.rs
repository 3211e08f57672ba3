//! What a restore changes in the copy it installs: every number a device
//! may have seen moves strictly past anything issued before the restore,
//! and nothing that was single-use stays usable. The argument is in
//! authority/README.md, "Backup and restore".

use rusqlite::{Transaction, params};

use super::outbox::{OUTBOX_BROKER, OUTBOX_REGISTRY};

/// What [`advance_past`] did to the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advanced {
    /// The floor every device-visible counter was raised to.
    pub floor: u64,
    /// The highest such counter the backup held (all are now ≥ `floor`).
    pub backup_max: u64,
    /// Devices in the copy.
    pub devices: u64,
    /// Nonces and enrollment challenges dropped.
    pub dropped_single_use: u64,
}

/// Why the copy was not advanced.
#[derive(Debug, thiserror::Error)]
pub enum AdvanceError {
    /// The floor is not above what the backup holds: the wall clock is
    /// behind the clock of an earlier restore, and the floor would not
    /// clear what was issued since.
    #[error(
        "the restore floor {floor} (this host's wall clock in µs) is not above the backup's highest sequence number {backup_max}; the clock is behind an earlier restore's: fix the clock and restore again"
    )]
    ClockBehind {
        /// The floor from the wall clock.
        floor: u64,
        /// What the backup holds.
        backup_max: u64,
    },
    /// SQLite failed.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// Raises the heartbeat seq, the revocation epoch, and every device's
/// control seq and registry version to `floor` (the restore's wall clock in
/// µs), drops outstanding nonces, enrollment challenges, leases and outbox
/// claims, and queues every device's registry record and broker rights again.
/// The daemon re-announces each device's standing at start with a control
/// at the new seq ([`crate::store::Store::requeue_latest_controls`]).
pub fn advance_past(
    tx: &Transaction<'_>,
    floor: u64,
    wall_ms: u64,
) -> Result<Advanced, AdvanceError> {
    let backup_max: u64 = tx.query_row(
        "SELECT max((SELECT max(hb_seq, epoch) FROM fleet WHERE id = 1), \
                    COALESCE((SELECT max(max(control_seq), max(registry_version)) FROM devices), 0))",
        [],
        |r| r.get(0),
    )?;
    if floor <= backup_max {
        return Err(AdvanceError::ClockBehind { floor, backup_max });
    }
    tx.execute(
        "UPDATE fleet SET hb_seq = ?1, epoch = ?1 WHERE id = 1",
        [floor],
    )?;
    let devices = tx.execute(
        "UPDATE devices SET control_seq = ?1, registry_version = ?1",
        [floor],
    )? as u64;
    let nonces = tx.execute("DELETE FROM nonces", [])?;
    let challenges = tx.execute("DELETE FROM enrollments", [])?;
    tx.execute("DELETE FROM leases", [])?;
    tx.execute(
        "UPDATE outbox SET claim_boot_id = NULL, claim_until_ms = NULL",
        [],
    )?;
    tx.execute(
        "INSERT INTO outbox (kind, device, wall_ms) SELECT ?1, id, ?3 FROM devices \
         UNION ALL SELECT ?2, id, ?3 FROM devices WHERE ak_public IS NOT NULL",
        params![OUTBOX_BROKER, OUTBOX_REGISTRY, wall_ms],
    )?;
    Ok(Advanced {
        floor,
        backup_max,
        devices,
        dropped_single_use: (nonces + challenges) as u64,
    })
}

//! `backup` and `restore`: the store's file copied while the daemon runs,
//! and installed again with every device-visible counter moved past
//! anything issued before (authority/README.md, "Backup and restore").

use std::path::Path;

use mctc_service::sqlite_backup::{self, BackupError, BackupInfo, RestoreInfo};
use rusqlite::{Connection, OptionalExtension};

use crate::config::Config;
use crate::error::Error;
use crate::now::Now;
use crate::store::sqlite::STORE_SCHEMA;
use crate::store::sqlite::restore::{AdvanceError, Advanced, advance_past};

/// The lease the heartbeat publisher holds (store/sqlite/fleet.rs).
const HEARTBEAT_LEASE: &str = "heartbeat";

/// A consistent copy of the database at `out` (0600; refused if it exists).
pub fn backup(config: &Config, out: &Path) -> Result<BackupInfo, Error> {
    Ok(sqlite_backup::backup(&config.database, out)?)
}

/// The floor a restore at `now_us` (Unix µs) raises counters to.
///
/// Every counter a device sees (heartbeat seq, revocation epoch, control
/// seq, registry version) grows by one per event, and events are far
/// rarer than one per µs (each is an fsynced transaction, ~3 ms). A
/// restore sets them to its wall-clock µs; from then on each stays below
/// the wall-clock µs of the moment it is issued. So a later restore's
/// floor (a later wall-clock µs) is above everything issued before it,
/// whichever backup it installs, including the same one twice.
pub fn floor_at(now_us: u64) -> u64 {
    now_us
}

/// Installs the backup `from` as the database (the daemon must be
/// stopped) and moves every device-visible counter past everything issued
/// before.
pub fn restore(config: &Config, from: &Path) -> Result<RestoreInfo<Advanced>, Error> {
    let now = Now::read()?;
    let now_us = wall_us();
    let info = sqlite_backup::restore(
        &config.database,
        from,
        &STORE_SCHEMA,
        |live| check_lease(live, &now),
        |tx| {
            advance_past(tx, floor_at(now_us), now.wall_ms).map_err(|e| match e {
                AdvanceError::ClockBehind { .. } => BackupError::FixUp(e.to_string()),
                AdvanceError::Sqlite(e) => BackupError::FixUp(format!("advance counters: {e}")),
            })
        },
    )?;
    Ok(info)
}

/// Refuses while an authority holds the heartbeat lease (it may be
/// running on another host that shares the file, or was killed less than a
/// lease ago and the lease has not run out).
fn check_lease(live: &Connection, now: &Now) -> Result<(), BackupError> {
    let lease: Option<(String, String, u64)> = live
        .query_row(
            "SELECT holder, boot_id, until_ms FROM leases WHERE name = ?1",
            [HEARTBEAT_LEASE],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(|e| BackupError::FixUp(format!("read the heartbeat lease: {e}")))?;
    match lease {
        Some((holder, boot_id, until_ms)) if boot_id == now.boot_id && until_ms > now.boot_ms => {
            Err(BackupError::FixUp(format!(
                "the heartbeat lease is held by {holder} for another {} ms: stop every authority instance first",
                until_ms - now.boot_ms
            )))
        }
        _ => Ok(()),
    }
}

fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

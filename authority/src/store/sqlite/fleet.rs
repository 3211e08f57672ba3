//! Fleet counters and the heartbeat: the lease, the seq, the revocation
//! list.

use mctc_shim::DeviceId;
use rusqlite::{Connection, OptionalExtension, params};

use super::rows::{immediate, load_fleet};
use crate::now::{Deadline, Now};
use crate::store::{FleetState, HeartbeatState, StoreError};

pub(super) const HEARTBEAT_LEASE: &str = "heartbeat";

pub(super) fn heartbeat(
    conn: &mut Connection,
    holder: &str,
    lease_ms: u64,
    max_revoked: usize,
    now: &Now,
) -> Result<Option<HeartbeatState>, StoreError> {
    let tx = immediate(conn)?;
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
    let mut oldest_listed = None;
    {
        let mut stmt = tx
            .prepare_cached("SELECT device, epoch FROM revocations ORDER BY epoch DESC LIMIT ?1")?;
        let rows = stmt.query_map([max_revoked as u64], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?))
        })?;
        for row in rows {
            let (id, row_epoch) = row?;
            revoked
                .push(DeviceId::new(&id).map_err(|_| {
                    StoreError::Corrupt(format!("revocation of invalid id {id:?}"))
                })?);
            oldest_listed = Some(row_epoch);
        }
    }
    let unlisted: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM revocations WHERE epoch < ?1)",
        [oldest_listed.map_or(i64::MAX, |e| i64::try_from(e).unwrap_or(i64::MAX))],
        |r| r.get(0),
    )?;
    tx.commit()?;
    // Every epoch that has a revocation has exactly one row, but not every
    // epoch has one: a restore raises the epoch past everything issued
    // before it (store/sqlite/restore.rs), leaving epochs without rows. So
    // the list covers `since_epoch + 1 ..= epoch` with `since_epoch` just
    // below the oldest row listed when older rows are left out, and 0 when
    // every row is listed.
    let since_epoch = match (oldest_listed, unlisted) {
        (Some(oldest), true) => oldest.saturating_sub(1),
        (None, true) => epoch,
        (_, false) => 0,
    };
    Ok(Some(HeartbeatState {
        seq,
        epoch,
        since_epoch,
        revoked,
    }))
}

pub(super) fn release_lease(conn: &mut Connection, holder: &str) -> Result<(), StoreError> {
    let tx = immediate(conn)?;
    tx.execute(
        "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
        params![HEARTBEAT_LEASE, holder],
    )?;
    tx.commit()?;
    Ok(())
}

pub(super) fn fleet(conn: &mut Connection) -> Result<FleetState, StoreError> {
    load_fleet(conn)
}

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
    {
        let mut stmt =
            tx.prepare_cached("SELECT device FROM revocations ORDER BY epoch DESC LIMIT ?1")?;
        let rows = stmt.query_map([max_revoked as u64], |r| r.get::<_, String>(0))?;
        for row in rows {
            let id = row?;
            revoked
                .push(DeviceId::new(&id).map_err(|_| {
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

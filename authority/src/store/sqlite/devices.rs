//! Devices: registration, the record as stored (checked on the way out),
//! and operator status changes.

use mctc_shim::DeviceId;
use mctc_shim::messages::DeviceStatus;
use rusqlite::{Connection, params};

use super::outbox::{queue_broker, queue_control};
use super::rows::{DEVICE_COLUMNS, RawDevice, immediate, load_device};
use crate::now::Now;
use crate::store::{DeviceRecord, NewDevice, StatusChange, StatusOutcome, StoreError};

pub(super) fn add_device(
    conn: &mut Connection,
    device: &NewDevice,
    now: &Now,
) -> Result<bool, StoreError> {
    let tx = immediate(conn)?;
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

pub(super) fn device(
    conn: &mut Connection,
    id: &DeviceId,
) -> Result<Option<DeviceRecord>, StoreError> {
    load_device(conn, id.as_str())
}

pub(super) fn devices(conn: &mut Connection) -> Result<Vec<DeviceRecord>, StoreError> {
    let mut stmt = conn.prepare(&format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY id"))?;
    let rows = stmt.query_map([], RawDevice::from_row)?;
    let mut devices = Vec::new();
    for row in rows {
        devices.push(row?.check()?);
    }
    Ok(devices)
}

pub(super) fn change_status(
    conn: &mut Connection,
    id: &DeviceId,
    change: StatusChange,
    reason: &str,
    now: &Now,
) -> Result<StatusOutcome, StoreError> {
    let tx = immediate(conn)?;
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

//! The outbox: controls, registry records and broker rights queued in the
//! transaction that caused them, claimed and acknowledged by the publisher.

use mctc_shim::DeviceId;
use mctc_shim::messages::{ControlAction, DeviceStatus};
use rusqlite::{Connection, Transaction, params};

use super::rows::{immediate, load_device};
use crate::now::Now;
use crate::store::{DeviceRecord, OutboxItem, RegistryRow, StoreError};

pub(super) const OUTBOX_CONTROL: i64 = 1;

pub(super) const OUTBOX_REGISTRY: i64 = 2;

/// The device's rights on the broker, built from its current status: granted
/// while it is active or contained, taken once it is revoked.
pub(super) const OUTBOX_BROKER: i64 = 3;

/// Queues a control message and (for an enrolled device) its registry
/// record; bumps the per-device counters. Returns the control's seq.
pub(super) fn queue_control(
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

/// Rows in the outbox.
pub(super) fn depth(conn: &Connection) -> Result<u64, StoreError> {
    Ok(conn.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?)
}

pub(super) fn queue_broker(
    tx: &Transaction<'_>,
    device: &str,
    now: &Now,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO outbox (kind, device, wall_ms) VALUES (?1, ?2, ?3)",
        params![OUTBOX_BROKER, device, now.wall_ms],
    )?;
    Ok(())
}

pub(super) fn queue_registry(
    tx: &Transaction<'_>,
    device: &str,
    now: &Now,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO outbox (kind, device, wall_ms) VALUES (?1, ?2, ?3)",
        params![OUTBOX_REGISTRY, device, now.wall_ms],
    )?;
    Ok(())
}

pub(super) fn claim_outbox(
    conn: &mut Connection,
    limit: usize,
    claim_ms: u64,
    now: &Now,
) -> Result<Vec<OutboxItem>, StoreError> {
    let tx = immediate(conn)?;
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

pub(super) fn ack_outbox(conn: &mut Connection, ids: &[i64]) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let tx = immediate(conn)?;
    for id in ids {
        tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
            .execute([id])?;
    }
    tx.commit()?;
    Ok(())
}

pub(super) fn requeue_latest_controls(
    conn: &mut Connection,
    now: &Now,
) -> Result<usize, StoreError> {
    let tx = immediate(conn)?;
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

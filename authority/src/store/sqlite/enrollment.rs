//! Credential challenges: stored, taken once, and the proven enrollment
//! committed after re-checking the device.

use mctc_shim::DeviceId;
use mctc_shim::messages::DeviceStatus;
use rusqlite::{Connection, OptionalExtension, params};

use super::outbox::queue_registry;
use super::rows::{digest, immediate, load_device};
use crate::now::{Deadline, Now};
use crate::store::{EnrollCommit, PendingEnrollment, StoreError};

pub(super) fn begin_enrollment(
    conn: &mut Connection,
    p: &PendingEnrollment,
) -> Result<(), StoreError> {
    let tx = immediate(conn)?;
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

pub(super) fn take_enrollment(
    conn: &mut Connection,
    device: &DeviceId,
    request_id: &[u8; 16],
    now: &Now,
) -> Result<Option<PendingEnrollment>, StoreError> {
    let tx = immediate(conn)?;
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

pub(super) fn commit_enrollment(
    conn: &mut Connection,
    p: &PendingEnrollment,
    now: &Now,
) -> Result<EnrollCommit, StoreError> {
    let tx = immediate(conn)?;
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

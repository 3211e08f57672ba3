//! Nonces and evidence: issue, consume once, record each decision (and
//! count it against a staged rollout); the sweep of expired nonces and
//! challenges.

use mctc_shim::DeviceId;
use mctc_shim::api::PcrStatus;
use mctc_shim::messages::{ControlAction, DeviceStatus, NoncePurpose};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::baselines::{count_stage_refusal, load_baseline};
use super::outbox::queue_control;
use super::rows::{immediate, load_device, load_fleet};
use crate::model::{ClassBaseline, Decision, NonceCheck, VerifiedFacts};
use crate::now::{Deadline, Now};
use crate::store::{Attested, DeviceRecord, Issue, NonceGrant, StoreError};

pub(super) fn insert_nonce(
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

pub(super) fn store_facts(
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

pub(super) fn issue_nonce(
    conn: &mut Connection,
    device: &DeviceId,
    nonce: &[u8; 32],
    purpose: NoncePurpose,
    deadline: &Deadline,
    max_outstanding: u32,
    now: &Now,
) -> Result<NonceGrant, StoreError> {
    let tx = immediate(conn)?;
    let row: Option<(u8, bool, String)> = tx
        .prepare_cached("SELECT status, ak_public IS NOT NULL, class FROM devices WHERE id = ?1")?
        .query_row([device.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let grant = match row {
        None => NonceGrant::Unknown,
        Some((_, false, _)) => NonceGrant::NotEnrolled,
        Some((status, true, class)) => match DeviceStatus::from_code(status) {
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
                NonceGrant::Issued { class }
            }
            Some(other) => NonceGrant::NotActive(other),
            None => return Err(StoreError::Corrupt(format!("device {device}: status"))),
        },
    };
    tx.commit()?;
    Ok(grant)
}

pub(super) fn attest(
    conn: &mut Connection,
    device: &DeviceId,
    nonce: &[u8; 32],
    issue: &Issue,
    now: &Now,
    decide: &mut dyn FnMut(&DeviceRecord, NonceCheck, &ClassBaseline) -> Decision,
) -> Result<Option<Attested>, StoreError> {
    let tx = immediate(conn)?;
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
    let baseline = load_baseline(&tx, &record.class)?;
    let fleet = load_fleet(&tx)?;
    let decision = decide(&record, check, &baseline);
    let mut status = record.status;
    let mut stage_stopped = None;
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
                 refusal_detail = NULL, refusal_pcrs = NULL, refused_since_ms = NULL, \
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
            detail,
            pcrs,
        } => {
            if let Some(facts) = facts {
                store_facts(&tx, id, facts, now)?;
            }
            let pcrs: Vec<PcrStatus> = pcrs.iter().map(PcrStatus::from).collect();
            // Plain structs of strings and numbers always encode.
            let pcrs = serde_json::to_string(&pcrs).unwrap_or_else(|_| "[]".to_owned());
            tx.execute(
                "UPDATE devices SET attempt_ms = ?2, verdict = 'refused', refusal = ?3, \
                 refusal_detail = ?4, refusal_pcrs = ?5, \
                 refused_since_ms = CASE WHEN verdict = 'refused' \
                     THEN coalesce(refused_since_ms, ?2) ELSE ?2 END \
                 WHERE id = ?1",
                params![id, now.wall_ms, refusal.name(), detail, pcrs],
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
            // Evidence that verified and was still refused, from a device
            // the stage covers: the staged values did not hold there.
            if facts.is_some()
                && let Some(stage) = baseline.staged(id)
            {
                stage_stopped = count_stage_refusal(&tx, stage, now)?;
            }
        }
    }
    tx.commit()?;
    Ok(Some(Attested {
        decision,
        class: record.class,
        fleet,
        status,
        stage_stopped,
    }))
}

pub(super) fn sweep(conn: &mut Connection, now: &Now) -> Result<usize, StoreError> {
    let tx = immediate(conn)?;
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

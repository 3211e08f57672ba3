//! What every concern shares: the write transaction, and the rows as
//! stored, read back and checked (the device record, the fleet counters,
//! the learned baselines).

use mctc_attest::ClockInfo;
use mctc_shim::DeviceId;
use mctc_shim::messages::DeviceStatus;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior};

use crate::model::{LearnedDigest, Refusal, RefusalDetail};
use crate::store::{DeviceRecord, Enrolled, FleetState, PcrSnapshot, StoreError, Verdict};

pub(super) const DEVICE_COLUMNS: &str = "id, class, status, reason, pinned_ek_sha256, ek_public, ek_sha256, \
    ak_public, ak_name, added_ms, enrolled_ms, control_seq, registry_version, clock, reset_count, \
    restart_count, clock_safe, pcr_mask, pcr_values, verified_ms, attempt_ms, verdict, refusal, \
    artifacts_issued, refusal_detail, refusal_pcrs, refused_since_ms";

/// A devices row as stored, before its values are checked.
pub(super) struct RawDevice {
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
    refusal_detail: Option<String>,
    refusal_pcrs: Option<String>,
    refused_since_ms: Option<u64>,
}

impl RawDevice {
    pub(super) fn from_row(r: &Row<'_>) -> rusqlite::Result<RawDevice> {
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
            refusal_detail: r.get(24)?,
            refusal_pcrs: r.get(25)?,
            refused_since_ms: r.get(26)?,
        })
    }

    pub(super) fn check(self) -> Result<DeviceRecord, StoreError> {
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
        // Rows refused before version 3 have no detail: shown as none.
        let refusal_detail = match (self.refusal_detail, self.refused_since_ms) {
            (Some(words), Some(since_ms)) => Some(RefusalDetail {
                words,
                pcrs: match self.refusal_pcrs.as_deref() {
                    None => Vec::new(),
                    Some(text) => {
                        serde_json::from_str(text).map_err(|_| corrupt("refusal PCRs"))?
                    }
                },
                since_ms,
            }),
            _ => None,
        };
        Ok(DeviceRecord {
            refusal_detail,
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

pub(super) fn digest(bytes: &[u8]) -> Result<[u8; 32], ()> {
    <[u8; 32]>::try_from(bytes).map_err(|_| ())
}

pub(super) fn load_device(conn: &Connection, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?1"
    ))?
    .query_row([id], RawDevice::from_row)
    .optional()?
    .map(RawDevice::check)
    .transpose()
}

pub(super) fn load_fleet(conn: &Connection) -> Result<FleetState, StoreError> {
    Ok(
        conn.query_row("SELECT hb_seq, epoch FROM fleet WHERE id = 1", [], |r| {
            Ok(FleetState {
                hb_seq: r.get(0)?,
                epoch: r.get(1)?,
            })
        })?,
    )
}

pub(super) fn load_learned(
    conn: &Connection,
    class: &str,
) -> Result<Vec<LearnedDigest>, StoreError> {
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

/// A write transaction that takes the lock up front (see the module docs).
pub(super) fn immediate(conn: &mut Connection) -> Result<Transaction<'_>, StoreError> {
    Ok(conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
}

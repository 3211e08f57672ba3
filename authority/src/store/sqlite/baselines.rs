//! What a class accepts beyond the policy file: learned digests (`policy
//! learn`, `policy forget`) and staged rollouts (`policy stage`, `promote`,
//! `rollback`, and the automatic stop counted by [`count_stage_refusal`]
//! inside the transaction that decides a staged device's evidence).

use mctc_shim::DeviceId;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use super::rows::{immediate, load_learned};
use crate::model::{ClassBaseline, Forget, LearnMode, Stage, StageState, indices};
use crate::now::Now;
use crate::store::{NewStage, Promotion, StoreError};

const STAGE_COLUMNS: &str = "id, class, learned_from, pcr_mask, pcr_values, share, stop_after, \
    failures, state, started_ms, ended_ms, end_reason";

fn stage_row(r: &Row<'_>) -> rusqlite::Result<RawStage> {
    Ok(RawStage {
        id: r.get(0)?,
        class: r.get(1)?,
        from: r.get(2)?,
        mask: r.get(3)?,
        values: r.get(4)?,
        share: r.get(5)?,
        stop_after: r.get(6)?,
        failures: r.get(7)?,
        state: r.get(8)?,
        started_ms: r.get(9)?,
        ended_ms: r.get(10)?,
        end_reason: r.get(11)?,
    })
}

struct RawStage {
    id: i64,
    class: String,
    from: String,
    mask: u32,
    values: Vec<u8>,
    share: u8,
    stop_after: u32,
    failures: u32,
    state: String,
    started_ms: u64,
    ended_ms: Option<u64>,
    end_reason: Option<String>,
}

impl RawStage {
    fn check(self) -> Result<Stage, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("stage {}: {what}", self.id));
        let state = StageState::from_name(&self.state).ok_or_else(|| corrupt("state"))?;
        let pcrs: Vec<u8> = indices(self.mask).collect();
        if self.values.len() != pcrs.len() * 32 || !(1..=100).contains(&self.share) {
            return Err(corrupt("values"));
        }
        let mut values = Vec::with_capacity(pcrs.len());
        for (pcr, chunk) in pcrs.into_iter().zip(self.values.chunks_exact(32)) {
            let mut digest = [0u8; 32];
            digest.copy_from_slice(chunk);
            values.push((pcr, digest));
        }
        Ok(Stage {
            id: self.id,
            class: self.class,
            from: self.from,
            values,
            share: self.share,
            stop_after: self.stop_after,
            failures: self.failures,
            state,
            started_ms: self.started_ms,
            ended_ms: self.ended_ms,
            end_reason: self.end_reason,
        })
    }
}

/// The latest stage of `class`, whatever its state.
fn load_stage(conn: &Connection, class: &str) -> Result<Option<Stage>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {STAGE_COLUMNS} FROM stages WHERE class = ?1 ORDER BY id DESC LIMIT 1"
    ))?
    .query_row([class], stage_row)
    .optional()?
    .map(RawStage::check)
    .transpose()
}

/// The learned digests and the latest stage of `class`.
pub(super) fn load_baseline(conn: &Connection, class: &str) -> Result<ClassBaseline, StoreError> {
    Ok(ClassBaseline {
        learned: load_learned(conn, class)?,
        stage: load_stage(conn, class)?,
    })
}

pub(super) fn baseline(conn: &mut Connection, class: &str) -> Result<ClassBaseline, StoreError> {
    let tx = conn.transaction()?;
    let baseline = load_baseline(&tx, class)?;
    tx.commit()?;
    Ok(baseline)
}

/// Whether `seen` is still the baseline of `class` in `tx`.
fn unchanged(tx: &Transaction<'_>, class: &str, seen: &ClassBaseline) -> Result<bool, StoreError> {
    Ok(load_baseline(tx, class)? == *seen)
}

pub(super) fn learn(
    conn: &mut Connection,
    seen: &ClassBaseline,
    class: &str,
    values: &[(u8, [u8; 32])],
    from: &DeviceId,
    mode: LearnMode,
    now: &Now,
) -> Result<bool, StoreError> {
    let tx = immediate(conn)?;
    if !unchanged(&tx, class, seen)? {
        return Ok(false);
    }
    insert_learned(&tx, class, values, from.as_str(), mode, now)?;
    tx.commit()?;
    Ok(true)
}

fn insert_learned(
    tx: &Transaction<'_>,
    class: &str,
    values: &[(u8, [u8; 32])],
    from: &str,
    mode: LearnMode,
    now: &Now,
) -> Result<(), StoreError> {
    for (pcr, value) in values {
        if mode == LearnMode::Replace {
            tx.execute(
                "DELETE FROM baselines WHERE class = ?1 AND pcr = ?2",
                params![class, pcr],
            )?;
        }
        // A digest accepted already keeps the origin it was learned from.
        tx.execute(
            "INSERT INTO baselines (class, pcr, digest, learned_from, learned_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            params![class, pcr, &value[..], from, now.wall_ms],
        )?;
    }
    Ok(())
}

pub(super) fn forget(
    conn: &mut Connection,
    seen: &ClassBaseline,
    class: &str,
    forget: &Forget,
) -> Result<Option<usize>, StoreError> {
    let tx = immediate(conn)?;
    if !unchanged(&tx, class, seen)? {
        return Ok(None);
    }
    let removed = match forget {
        Forget::Digest { pcr, digest } => tx.execute(
            "DELETE FROM baselines WHERE class = ?1 AND pcr = ?2 AND digest = ?3",
            params![class, pcr, &digest[..]],
        )?,
        Forget::LearnedFrom(from) => tx.execute(
            "DELETE FROM baselines WHERE class = ?1 AND learned_from = ?2",
            params![class, from],
        )?,
    };
    tx.commit()?;
    Ok(Some(removed))
}

fn active_stage(tx: &Transaction<'_>, class: &str) -> Result<Option<Stage>, StoreError> {
    Ok(load_stage(tx, class)?.filter(|s| s.state == StageState::Active))
}

pub(super) fn start_stage(
    conn: &mut Connection,
    seen: &ClassBaseline,
    stage: &NewStage,
    now: &Now,
) -> Result<Option<Stage>, StoreError> {
    let tx = immediate(conn)?;
    if !unchanged(&tx, &stage.class, seen)? || active_stage(&tx, &stage.class)?.is_some() {
        return Ok(None);
    }
    let mask = stage
        .values
        .iter()
        .fold(0u32, |m, (pcr, _)| m | (1u32 << pcr));
    let mut sorted = stage.values.clone();
    sorted.sort_by_key(|(pcr, _)| *pcr);
    let values: Vec<u8> = sorted.iter().flat_map(|(_, v)| *v).collect();
    tx.execute(
        "INSERT INTO stages (class, learned_from, pcr_mask, pcr_values, share, stop_after, state, started_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'active', ?7)",
        params![
            stage.class,
            stage.from.as_str(),
            mask,
            values,
            stage.share,
            stage.stop_after,
            now.wall_ms
        ],
    )?;
    let started = active_stage(&tx, &stage.class)?;
    tx.commit()?;
    Ok(started)
}

pub(super) fn promote_stage(
    conn: &mut Connection,
    seen: &ClassBaseline,
    class: &str,
    promotion: Promotion,
    now: &Now,
) -> Result<Option<Stage>, StoreError> {
    let tx = immediate(conn)?;
    if !unchanged(&tx, class, seen)? {
        return Ok(None);
    }
    let Some(stage) = active_stage(&tx, class)? else {
        return Ok(None);
    };
    match promotion {
        Promotion::Widen(share) => {
            // Never narrower: a device once staged stays staged.
            tx.execute(
                "UPDATE stages SET share = max(share, ?2) WHERE id = ?1",
                params![stage.id, share],
            )?;
        }
        Promotion::Finish => {
            insert_learned(&tx, class, &stage.values, &stage.from, LearnMode::Add, now)?;
            end(
                &tx,
                stage.id,
                StageState::Promoted,
                "promoted to the whole class",
                now,
            )?;
        }
    }
    let after = load_stage(&tx, class)?;
    tx.commit()?;
    Ok(after)
}

pub(super) fn roll_back_stage(
    conn: &mut Connection,
    seen: &ClassBaseline,
    class: &str,
    reason: &str,
    now: &Now,
) -> Result<Option<Stage>, StoreError> {
    let tx = immediate(conn)?;
    if !unchanged(&tx, class, seen)? {
        return Ok(None);
    }
    let Some(stage) = active_stage(&tx, class)? else {
        return Ok(None);
    };
    end(&tx, stage.id, StageState::RolledBack, reason, now)?;
    let after = load_stage(&tx, class)?;
    tx.commit()?;
    Ok(after)
}

fn end(
    tx: &Transaction<'_>,
    id: i64,
    state: StageState,
    reason: &str,
    now: &Now,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE stages SET state = ?2, ended_ms = ?3, end_reason = ?4 WHERE id = ?1 AND state = 'active'",
        params![id, state.name(), now.wall_ms, reason],
    )?;
    Ok(())
}

/// Counts one refusal of a staged device's verified evidence against
/// `stage`; at its `stop_after`-th the stage stops, so the staged share is
/// judged by the class's own values again from the next decision on.
/// Returns the stage if this refusal stopped it.
pub(super) fn count_stage_refusal(
    tx: &Transaction<'_>,
    stage: &Stage,
    now: &Now,
) -> Result<Option<Stage>, StoreError> {
    let counted: Option<(u32, u32)> = tx
        .query_row(
            "UPDATE stages SET failures = failures + 1 WHERE id = ?1 AND state = 'active' \
             RETURNING failures, stop_after",
            [stage.id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((failures, stop_after)) = counted else {
        return Ok(None);
    };
    if failures < stop_after {
        return Ok(None);
    }
    end(
        tx,
        stage.id,
        StageState::Stopped,
        &format!("{failures} refusals in the staged share (stop after {stop_after})"),
        now,
    )?;
    load_stage(tx, &stage.class)
}

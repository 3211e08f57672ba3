//! The SQLite store: the system libsqlite3, WAL journal, `synchronous =
//! FULL` (a batch is acknowledged only after its transaction is on disk, so
//! an ack never covers a record a power cut could lose). One transaction per
//! batch keeps that to one fsync per batch. Writes take the lock up front
//! (`BEGIN IMMEDIATE`), so the head check and the writes of [`Store::apply`]
//! are one atomic step even if several collector processes share the file.
//!
//! The schema is documented in `collector/README.md` ("Storage"); its
//! version is `PRAGMA user_version`.

use std::path::Path;
use std::time::Duration;

use mctc_attest::ClockInfo;
use mctc_service::sqlite::Schema;
use mctc_shim::DeviceId;
use mctc_shim::messages::DeviceStatus;
use mctc_shim::tpm::BootCounters;
use ring::digest;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};

use super::{
    Anomaly, AnomalyKind, AnomalyOverflow, Changes, DEFAULT_ANOMALY_ROWS_PER_KIND, Head,
    NewAnomaly, PendingSummary, Recorded, RegistryChange, Store, StoreError,
};
use crate::registry::RegistryEntry;

/// The schema, one migration per version (`PRAGMA user_version`), run by
/// the shared opener (`mctc_service::sqlite`). `IF NOT EXISTS` keeps them
/// safe on databases made before the migrations were numbered.
pub const SCHEMA: Schema = Schema {
    migrations: &[V1, V2],
};

/// The schema, for the shared backup and restore
/// (`mctc_service::sqlite_backup`).
pub const STORE_SCHEMA: Schema = SCHEMA;

/// The schema version this build writes.
#[cfg(test)]
const SCHEMA_VERSION: i64 = 2;

/// Version 1: registry, heads, records, checkpoints, pending, anomalies.
const V1: &str = "
CREATE TABLE IF NOT EXISTS registry (
    device      TEXT PRIMARY KEY,
    version     INTEGER NOT NULL,
    status      INTEGER NOT NULL,
    class       TEXT NOT NULL,
    ak_public   BLOB NOT NULL,
    ak_name     BLOB NOT NULL,
    ek_sha256   BLOB NOT NULL,
    iat         INTEGER NOT NULL,
    signed      BLOB NOT NULL,
    received_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS heads (
    device        TEXT PRIMARY KEY,
    next_seq      INTEGER NOT NULL,
    head          BLOB NOT NULL,
    last_reset    INTEGER,
    last_restart  INTEGER,
    last_mono_ms  INTEGER NOT NULL,
    quote_clock   INTEGER,
    quote_reset   INTEGER,
    quote_restart INTEGER,
    quote_safe    INTEGER,
    updated_ms    INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS records (
    device        TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    hash          BLOB NOT NULL,
    kind          INTEGER NOT NULL,
    reset_count   INTEGER NOT NULL,
    restart_count INTEGER NOT NULL,
    mono_ms       INTEGER NOT NULL,
    wall_ms       INTEGER,
    bytes         BLOB NOT NULL,
    received_ms   INTEGER NOT NULL,
    PRIMARY KEY (device, seq)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    device        TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    committed_seq INTEGER NOT NULL,
    tpm_clock     INTEGER NOT NULL,
    reset_count   INTEGER NOT NULL,
    restart_count INTEGER NOT NULL,
    safe          INTEGER NOT NULL,
    pcr_digest    BLOB NOT NULL,
    PRIMARY KEY (device, seq)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (
    device      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    bytes       BLOB NOT NULL,
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (device, seq)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS anomalies (
    id              INTEGER PRIMARY KEY,
    device          TEXT NOT NULL,
    kind            TEXT NOT NULL,
    seq_key         INTEGER NOT NULL,
    detail          TEXT NOT NULL,
    evidence        BLOB,
    evidence_sha256 BLOB NOT NULL,
    first_seen_ms   INTEGER NOT NULL,
    last_seen_ms    INTEGER NOT NULL,
    count           INTEGER NOT NULL,
    UNIQUE (device, kind, seq_key, evidence_sha256)
) STRICT;
CREATE INDEX IF NOT EXISTS anomalies_by_device ON anomalies (device, id);
";

/// Version 2: per device and kind, the anomalies beyond the row bound.
const V2: &str = "
CREATE TABLE IF NOT EXISTS anomaly_overflow (
    device        TEXT NOT NULL,
    kind          TEXT NOT NULL,
    count         INTEGER NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL,
    last_detail   TEXT NOT NULL,
    PRIMARY KEY (device, kind)
) STRICT, WITHOUT ROWID;
";

/// An `anomalies` row as read: id, device, kind, seq_key, detail,
/// evidence_sha256, first_seen_ms, last_seen_ms, count.
type AnomalyRow = (i64, String, String, i64, String, Vec<u8>, i64, i64, i64);

/// The SQLite-backed [`Store`].
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    anomaly_rows_per_kind: u64,
}

fn int(what: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { what, value })
}

fn uint(what: &str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative {what}: {value}")))
}

fn u32_of(what: &str, value: i64) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} out of range: {value}")))
}

fn hash32(what: &str, bytes: Vec<u8>) -> Result<[u8; 32], StoreError> {
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| StoreError::Corrupt(format!("{what} is not 32 bytes")))
}

impl SqliteStore {
    /// Opens the database at `path` through the shared opener: created
    /// 0600 if new, WAL (checked), `synchronous = FULL` (a batch is acked
    /// only once on disk), migrated.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self::with(mctc_service::sqlite::open(path, &SCHEMA)?))
    }

    /// Opens an existing database for reading only (the console): nothing
    /// is created, migrated or written; a busy database fails after
    /// `mctc_service::sqlite::READ_BUSY_TIMEOUT`, and [`Store::apply`] or
    /// [`Store::put_registry`] fail on it as read-only.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        Ok(Self::with(mctc_service::sqlite::open_read_only(
            path, &SCHEMA,
        )?))
    }

    /// A private in-memory database (unit tests).
    pub fn in_memory() -> Result<Self, StoreError> {
        Ok(Self::with(mctc_service::sqlite::open_in_memory(&SCHEMA)?))
    }

    fn with(conn: Connection) -> Self {
        Self {
            conn,
            anomaly_rows_per_kind: DEFAULT_ANOMALY_ROWS_PER_KIND,
        }
    }

    /// Waits at most `timeout` for another writer's lock before an
    /// operation fails as busy (default
    /// [`mctc_service::sqlite::BUSY_TIMEOUT`]); callers that would rather
    /// fail fast, such as tests, shorten it.
    pub fn with_busy_timeout(self, timeout: Duration) -> Result<Self, StoreError> {
        self.conn.busy_timeout(timeout)?;
        Ok(self)
    }

    /// Keeps at most `rows` anomaly rows per device and kind (at least 1).
    #[must_use]
    pub fn with_anomaly_rows_per_kind(mut self, rows: u64) -> Self {
        self.anomaly_rows_per_kind = rows.max(1);
        self
    }

    /// Records one anomaly inside `tx`: a repeat raises its row's count, a
    /// first sighting gets a row while the device has fewer than the bound
    /// of this kind, and otherwise only raises the overflow count.
    fn record_anomaly(
        tx: &Transaction<'_>,
        rows_per_kind: u64,
        id: &str,
        a: &NewAnomaly,
        now: i64,
    ) -> Result<Recorded, StoreError> {
        let evidence_sha256 = a.evidence.as_ref().map_or([0u8; 32], |e| {
            let mut out = [0u8; 32];
            out.copy_from_slice(digest::digest(&digest::SHA256, e).as_ref());
            out
        });
        let seq_key = a.seq.map(|s| int("seq", s)).transpose()?.unwrap_or(-1);
        let repeated = tx
            .prepare_cached(
                "UPDATE anomalies SET count = count + 1, last_seen_ms = ?5
                 WHERE device = ?1 AND kind = ?2 AND seq_key = ?3 AND evidence_sha256 = ?4",
            )?
            .execute(params![
                id,
                a.kind.name(),
                seq_key,
                &evidence_sha256[..],
                now
            ])?;
        if repeated > 0 {
            return Ok(Recorded::Repeat);
        }
        let kept: i64 = tx
            .prepare_cached("SELECT count(*) FROM anomalies WHERE device = ?1 AND kind = ?2")?
            .query_row(params![id, a.kind.name()], |r| r.get(0))?;
        if uint("count", kept)? < rows_per_kind {
            let row = tx
                .prepare_cached(&format!(
                    "INSERT INTO anomalies (device, kind, seq_key, detail, evidence,
                                            evidence_sha256, first_seen_ms, last_seen_ms, count)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, 1)
                     RETURNING {ANOMALY_COLUMNS}"
                ))?
                .query_row(
                    params![
                        id,
                        a.kind.name(),
                        seq_key,
                        a.detail,
                        a.evidence,
                        &evidence_sha256[..],
                        now
                    ],
                    Self::anomaly_row,
                )?;
            return Ok(Recorded::New(Self::anomaly_from(row)?));
        }
        let (count, first, last, detail): (i64, i64, i64, String) = tx
            .prepare_cached(
                "INSERT INTO anomaly_overflow (device, kind, count, first_seen_ms, last_seen_ms,
                                               last_detail)
                 VALUES (?1, ?2, 1, ?3, ?3, ?4)
                 ON CONFLICT (device, kind) DO UPDATE SET
                    count = count + 1, last_seen_ms = excluded.last_seen_ms,
                    last_detail = excluded.last_detail
                 RETURNING count, first_seen_ms, last_seen_ms, last_detail",
            )?
            .query_row(params![id, a.kind.name(), now, a.detail], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?;
        Ok(Recorded::Overflow(AnomalyOverflow {
            device: id.to_owned(),
            kind: a.kind,
            count: uint("count", count)?,
            first_seen_ms: uint("first_seen_ms", first)?,
            last_seen_ms: uint("last_seen_ms", last)?,
            last_detail: detail,
        }))
    }

    /// Number of stored records of `device`.
    pub fn record_count(&self, device: &DeviceId) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT count(*) FROM records WHERE device = ?1",
            [device.as_str()],
            |r| r.get(0),
        )?;
        uint("count", n)
    }

    fn read_head(tx: &Connection, device: &DeviceId) -> Result<Option<Head>, StoreError> {
        let row = tx
            .prepare_cached(
                "SELECT next_seq, head, last_reset, last_restart, last_mono_ms,
                        quote_clock, quote_reset, quote_restart, quote_safe
                 FROM heads WHERE device = ?1",
            )?
            .query_row([device.as_str()], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                    r.get::<_, Option<i64>>(7)?,
                    r.get::<_, Option<i64>>(8)?,
                ))
            })
            .optional()?;
        let Some((next, hash, reset, restart, mono, qclock, qreset, qrestart, qsafe)) = row else {
            return Ok(None);
        };
        let last_boot = match (reset, restart) {
            (Some(reset), Some(restart)) => Some(BootCounters {
                reset: u32_of("last_reset", reset)?,
                restart: u32_of("last_restart", restart)?,
            }),
            _ => None,
        };
        let last_quote_clock = match (qclock, qreset, qrestart, qsafe) {
            (Some(clock), Some(reset), Some(restart), Some(safe)) => Some(ClockInfo {
                clock: uint("quote_clock", clock)?,
                reset_count: u32_of("quote_reset", reset)?,
                restart_count: u32_of("quote_restart", restart)?,
                safe: safe != 0,
            }),
            _ => None,
        };
        Ok(Some(Head {
            next_seq: uint("next_seq", next)?,
            hash: hash32("head", hash)?,
            last_boot,
            last_mono_ms: uint("last_mono_ms", mono)?,
            last_quote_clock,
        }))
    }

    fn write_head(
        tx: &Transaction<'_>,
        device: &DeviceId,
        head: &Head,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let boot = head.last_boot;
        let quote = head.last_quote_clock;
        let quote_clock = quote.map(|q| int("quote_clock", q.clock)).transpose()?;
        tx.prepare_cached(
            "INSERT INTO heads (device, next_seq, head, last_reset, last_restart, last_mono_ms,
                                quote_clock, quote_reset, quote_restart, quote_safe, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (device) DO UPDATE SET
                next_seq = excluded.next_seq, head = excluded.head,
                last_reset = excluded.last_reset, last_restart = excluded.last_restart,
                last_mono_ms = excluded.last_mono_ms, quote_clock = excluded.quote_clock,
                quote_reset = excluded.quote_reset, quote_restart = excluded.quote_restart,
                quote_safe = excluded.quote_safe, updated_ms = excluded.updated_ms",
        )?
        .execute(params![
            device.as_str(),
            int("next_seq", head.next_seq)?,
            &head.hash[..],
            boot.map(|b| i64::from(b.reset)),
            boot.map(|b| i64::from(b.restart)),
            int("last_mono_ms", head.last_mono_ms)?,
            quote_clock,
            quote.map(|q| i64::from(q.reset_count)),
            quote.map(|q| i64::from(q.restart_count)),
            quote.map(|q| i64::from(q.safe)),
            now_ms,
        ])?;
        Ok(())
    }

    fn anomaly_row(r: &Row<'_>) -> rusqlite::Result<AnomalyRow> {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
        ))
    }

    fn anomaly_from(row: AnomalyRow) -> Result<Anomaly, StoreError> {
        let (id, device, kind, seq_key, detail, evidence_sha256, first, last, count) = row;
        let kind = AnomalyKind::from_name(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown anomaly kind {kind:?}")))?;
        let evidence_sha256 = if evidence_sha256.iter().all(|b| *b == 0) {
            String::new()
        } else {
            hex::encode(evidence_sha256)
        };
        Ok(Anomaly {
            id,
            device,
            kind,
            seq: if seq_key < 0 {
                None
            } else {
                Some(uint("seq", seq_key)?)
            },
            detail,
            evidence_sha256,
            first_seen_ms: uint("first_seen_ms", first)?,
            last_seen_ms: uint("last_seen_ms", last)?,
            count: uint("count", count)?,
        })
    }
}

const ANOMALY_COLUMNS: &str =
    "id, device, kind, seq_key, detail, evidence_sha256, first_seen_ms, last_seen_ms, count";

fn status_code(status: DeviceStatus) -> i64 {
    i64::from(status.code())
}

impl Store for SqliteStore {
    fn registry(&self, device: &DeviceId) -> Result<Option<RegistryEntry>, StoreError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT version, status, class, ak_public, ak_name, ek_sha256, iat, signed
                 FROM registry WHERE device = ?1",
            )?
            .query_row([device.as_str()], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                    r.get::<_, Vec<u8>>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, Vec<u8>>(7)?,
                ))
            })
            .optional()?;
        let Some((version, status, class, ak_public, ak_name, ek, iat, signed)) = row else {
            return Ok(None);
        };
        let status = u8::try_from(status)
            .ok()
            .and_then(DeviceStatus::from_code)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown device status {status}")))?;
        Ok(Some(RegistryEntry {
            device: device.clone(),
            version: uint("version", version)?,
            status,
            class,
            ak_public,
            ak_name,
            ek_sha256: hash32("ek_sha256", ek)?,
            iat: uint("iat", iat)?,
            signed,
        }))
    }

    fn put_registry(
        &mut self,
        entry: &RegistryEntry,
        now_ms: u64,
    ) -> Result<RegistryChange, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let stored: Option<(i64, Vec<u8>)> = tx
            .query_row(
                "SELECT version, signed FROM registry WHERE device = ?1",
                [entry.device.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let version = int("version", entry.version)?;
        let change = match stored {
            None => RegistryChange::New,
            Some((v, _)) if v < version => RegistryChange::Replaced,
            Some((v, signed)) if v == version && signed == entry.signed => {
                return Ok(RegistryChange::Unchanged);
            }
            Some(_) => return Ok(RegistryChange::Stale),
        };
        tx.execute(
            "INSERT INTO registry (device, version, status, class, ak_public, ak_name, ek_sha256,
                                   iat, signed, received_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (device) DO UPDATE SET
                version = excluded.version, status = excluded.status, class = excluded.class,
                ak_public = excluded.ak_public, ak_name = excluded.ak_name,
                ek_sha256 = excluded.ek_sha256, iat = excluded.iat, signed = excluded.signed,
                received_ms = excluded.received_ms",
            params![
                entry.device.as_str(),
                version,
                status_code(entry.status),
                entry.class,
                entry.ak_public,
                entry.ak_name,
                &entry.ek_sha256[..],
                int("iat", entry.iat)?,
                entry.signed,
                int("received_ms", now_ms)?,
            ],
        )?;
        tx.commit()?;
        Ok(change)
    }

    fn head(&self, device: &DeviceId) -> Result<Option<Head>, StoreError> {
        Self::read_head(&self.conn, device)
    }

    fn record(&self, device: &DeviceId, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT bytes FROM records WHERE device = ?1 AND seq = ?2")?
            .query_row(params![device.as_str(), int("seq", seq)?], |r| r.get(0))
            .optional()?)
    }

    fn latest_checkpoint(
        &self,
        device: &DeviceId,
        at_most: u64,
    ) -> Result<Option<u64>, StoreError> {
        let seq: Option<i64> = self
            .conn
            .prepare_cached("SELECT MAX(seq) FROM checkpoints WHERE device = ?1 AND seq <= ?2")?
            .query_row(
                params![device.as_str(), int("seq", at_most.min(i64::MAX as u64))?],
                |r| r.get(0),
            )?;
        seq.map(|s| uint("checkpoint seq", s)).transpose()
    }

    fn records_range(
        &self,
        device: &DeviceId,
        from: u64,
        through: u64,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT bytes FROM records WHERE device = ?1 AND seq >= ?2 AND seq <= ?3 ORDER BY seq",
        )?;
        let rows = stmt.query_map(
            params![device.as_str(), int("seq", from)?, int("seq", through)?],
            |r| r.get::<_, Vec<u8>>(0),
        )?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row?);
        }
        Ok(out)
    }

    fn pending(&self, device: &DeviceId, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT bytes FROM pending WHERE device = ?1 AND seq = ?2")?
            .query_row(params![device.as_str(), int("seq", seq)?], |r| r.get(0))
            .optional()?)
    }

    fn pending_summary(&self) -> Result<Vec<PendingSummary>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT device, count(*), min(seq), min(received_ms) FROM pending GROUP BY device",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (device, count, lowest, oldest) = row?;
            out.push(PendingSummary {
                device,
                count: uint("count", count)?,
                lowest_seq: uint("seq", lowest)?,
                oldest_ms: uint("received_ms", oldest)?,
            });
        }
        Ok(out)
    }

    fn apply(
        &mut self,
        device: &DeviceId,
        changes: &Changes,
        now_ms: u64,
    ) -> Result<Vec<Recorded>, StoreError> {
        let now = int("now_ms", now_ms)?;
        let id = device.as_str();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found = Self::read_head(&tx, device)?.map_or(0, |h| h.next_seq);
        if found != changes.expected_next {
            return Err(StoreError::HeadMoved {
                device: id.to_owned(),
                expected: changes.expected_next,
                found,
            });
        }
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO records (device, seq, hash, kind, reset_count, restart_count,
                                      mono_ms, wall_ms, bytes, received_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for r in &changes.records {
                insert.execute(params![
                    id,
                    int("seq", r.seq)?,
                    &r.hash[..],
                    i64::from(r.kind),
                    i64::from(r.boot.reset),
                    i64::from(r.boot.restart),
                    int("mono_ms", r.mono_ms)?,
                    r.wall_ms.map(|w| int("wall_ms", w)).transpose()?,
                    r.bytes,
                    now,
                ])?;
            }
            let mut checkpoint = tx.prepare_cached(
                "INSERT INTO checkpoints (device, seq, committed_seq, tpm_clock, reset_count,
                                          restart_count, safe, pcr_digest)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for c in &changes.checkpoints {
                checkpoint.execute(params![
                    id,
                    int("seq", c.seq)?,
                    int("committed_seq", c.committed_seq)?,
                    int("tpm_clock", c.clock.clock)?,
                    i64::from(c.clock.reset_count),
                    i64::from(c.clock.restart_count),
                    i64::from(c.clock.safe),
                    c.pcr_digest,
                ])?;
            }
            let mut add = tx.prepare_cached(
                "INSERT OR IGNORE INTO pending (device, seq, bytes, received_ms)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (seq, bytes) in &changes.pending_add {
                add.execute(params![id, int("seq", *seq)?, bytes, now])?;
            }
            let mut remove =
                tx.prepare_cached("DELETE FROM pending WHERE device = ?1 AND seq = ?2")?;
            for seq in &changes.pending_remove {
                remove.execute(params![id, int("seq", *seq)?])?;
            }
        }
        if let Some(head) = &changes.head {
            Self::write_head(&tx, device, head, now)?;
        }
        // Anything pending below the head is superseded (also what another
        // writer left behind).
        let next = changes
            .head
            .as_ref()
            .map_or(changes.expected_next, |h| h.next_seq);
        tx.prepare_cached("DELETE FROM pending WHERE device = ?1 AND seq < ?2")?
            .execute(params![id, int("next_seq", next)?])?;
        let mut recorded = Vec::with_capacity(changes.anomalies.len());
        let rows_per_kind = self.anomaly_rows_per_kind;
        for a in &changes.anomalies {
            recorded.push(Self::record_anomaly(&tx, rows_per_kind, id, a, now)?);
        }
        tx.commit()?;
        Ok(recorded)
    }

    fn anomalies(&self, device: Option<&DeviceId>) -> Result<Vec<Anomaly>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {ANOMALY_COLUMNS} FROM anomalies
             WHERE ?1 IS NULL OR device = ?1 ORDER BY id DESC"
        ))?;
        let rows = stmt.query_map([device.map(DeviceId::as_str)], Self::anomaly_row)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(Self::anomaly_from(row?)?);
        }
        Ok(out)
    }

    fn anomaly_overflow(
        &self,
        device: Option<&DeviceId>,
    ) -> Result<Vec<AnomalyOverflow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT device, kind, count, first_seen_ms, last_seen_ms, last_detail
             FROM anomaly_overflow WHERE ?1 IS NULL OR device = ?1 ORDER BY device, kind",
        )?;
        let rows = stmt.query_map([device.map(DeviceId::as_str)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (device, kind, count, first, last, last_detail) = row?;
            out.push(AnomalyOverflow {
                device,
                kind: AnomalyKind::from_name(&kind)
                    .ok_or_else(|| StoreError::Corrupt(format!("unknown anomaly kind {kind:?}")))?,
                count: uint("count", count)?,
                first_seen_ms: uint("first_seen_ms", first)?,
                last_seen_ms: uint("last_seen_ms", last)?,
                last_detail,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewAnomaly, NewRecord};

    /// Makes a store at `path` whose `table` (and its indexes) has damaged
    /// root pages: a real corrupt file whose schema still reads, so it
    /// opens and fails only when the table is used.
    fn corrupt_table(path: &Path, table: &str) {
        drop(SqliteStore::open(path).unwrap());
        mctc_tests::collector::corrupt_table(path, table);
    }

    fn device() -> DeviceId {
        DeviceId::new("d1").unwrap()
    }

    fn entry(version: u64, signed: &[u8]) -> RegistryEntry {
        RegistryEntry {
            device: device(),
            version,
            status: DeviceStatus::Active,
            class: "pos".into(),
            ak_public: vec![1],
            ak_name: vec![2],
            ek_sha256: [3; 32],
            iat: 10,
            signed: signed.to_vec(),
        }
    }

    fn record(seq: u64) -> NewRecord {
        NewRecord {
            seq,
            hash: [seq as u8; 32],
            kind: 11,
            boot: BootCounters {
                reset: 1,
                restart: 0,
            },
            mono_ms: seq,
            wall_ms: None,
            bytes: vec![seq as u8],
        }
    }

    fn head(next: u64) -> Head {
        Head {
            next_seq: next,
            hash: [next as u8; 32],
            last_boot: Some(BootCounters {
                reset: 1,
                restart: 0,
            }),
            last_mono_ms: next,
            last_quote_clock: Some(ClockInfo {
                clock: 99,
                reset_count: 1,
                restart_count: 0,
                safe: true,
            }),
        }
    }

    #[test]
    fn registry_keeps_the_highest_version() {
        let mut s = SqliteStore::in_memory().unwrap();
        assert_eq!(
            s.put_registry(&entry(2, b"a"), 1).unwrap(),
            RegistryChange::New
        );
        assert_eq!(
            s.put_registry(&entry(2, b"a"), 2).unwrap(),
            RegistryChange::Unchanged
        );
        assert_eq!(
            s.put_registry(&entry(2, b"b"), 3).unwrap(),
            RegistryChange::Stale
        );
        assert_eq!(
            s.put_registry(&entry(1, b"c"), 4).unwrap(),
            RegistryChange::Stale
        );
        assert_eq!(
            s.put_registry(&entry(3, b"d"), 5).unwrap(),
            RegistryChange::Replaced
        );
        assert_eq!(s.registry(&device()).unwrap().unwrap(), entry(3, b"d"));
    }

    #[test]
    fn apply_is_atomic_and_compare_and_swap() {
        let mut s = SqliteStore::in_memory().unwrap();
        let changes = Changes {
            expected_next: 0,
            head: Some(head(2)),
            records: vec![record(0), record(1)],
            pending_add: vec![(5, vec![5]), (7, vec![7])],
            ..Changes::default()
        };
        s.apply(&device(), &changes, 1).unwrap();
        assert_eq!(s.head(&device()).unwrap(), Some(head(2)));
        assert_eq!(s.record(&device(), 1).unwrap(), Some(vec![1]));
        assert_eq!(s.pending(&device(), 5).unwrap(), Some(vec![5]));
        // Based on a stale head: refused, nothing written.
        let stale = Changes {
            expected_next: 0,
            head: Some(head(3)),
            records: vec![record(2)],
            ..Changes::default()
        };
        assert!(matches!(
            s.apply(&device(), &stale, 2),
            Err(StoreError::HeadMoved {
                expected: 0,
                found: 2,
                ..
            })
        ));
        assert_eq!(s.record(&device(), 2).unwrap(), None);
        // A duplicate seq violates the primary key: the whole batch rolls back.
        let dup = Changes {
            expected_next: 2,
            head: Some(head(4)),
            records: vec![record(2), record(2)],
            ..Changes::default()
        };
        assert!(s.apply(&device(), &dup, 3).is_err());
        assert_eq!(s.head(&device()).unwrap(), Some(head(2)));
        assert_eq!(s.record_count(&device()).unwrap(), 2);
        // Advancing past pending records drops those below the new head.
        let forward = Changes {
            expected_next: 2,
            head: Some(head(6)),
            records: (2..6).map(record).collect(),
            ..Changes::default()
        };
        s.apply(&device(), &forward, 4).unwrap();
        assert_eq!(s.pending(&device(), 5).unwrap(), None);
        let summary = s.pending_summary().unwrap();
        assert_eq!(summary.len(), 1);
        assert_eq!((summary[0].count, summary[0].lowest_seq), (1, 7));
    }

    #[test]
    fn repeated_anomalies_count_instead_of_piling_up() {
        let mut s = SqliteStore::in_memory().unwrap();
        let anomaly = |evidence: &[u8]| NewAnomaly {
            kind: AnomalyKind::Fork,
            seq: Some(4),
            detail: "two records 4".into(),
            evidence: Some(evidence.to_vec()),
        };
        let changes = Changes {
            anomalies: vec![anomaly(b"x"), anomaly(b"x"), anomaly(b"y")],
            ..Changes::default()
        };
        let recorded = s.apply(&device(), &changes, 7).unwrap();
        assert!(matches!(recorded[0], Recorded::New(_)));
        assert_eq!(recorded[1], Recorded::Repeat);
        assert!(matches!(recorded[2], Recorded::New(_)));
        let all = s.anomalies(Some(&device())).unwrap();
        assert_eq!(all.len(), 2);
        let x = all.iter().find(|a| a.count == 2).unwrap();
        assert_eq!(x.kind, AnomalyKind::Fork);
        assert_eq!(x.seq, Some(4));
        assert_eq!(x.evidence_sha256.len(), 64);
        assert!(
            s.anomalies(Some(&DeviceId::new("d2").unwrap()))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn anomaly_rows_are_bounded_per_device_and_kind_keeping_the_first() {
        let mut s = SqliteStore::in_memory()
            .unwrap()
            .with_anomaly_rows_per_kind(3);
        let fork = |seq: u64| NewAnomaly {
            kind: AnomalyKind::Fork,
            seq: Some(seq),
            detail: format!("fork at {seq}"),
            evidence: Some(vec![seq as u8; 100]),
        };
        // A hostile device sends 1000 distinct forks, one batch each.
        let mut outcomes = Vec::new();
        for seq in 0..1000 {
            let changes = Changes {
                anomalies: vec![fork(seq)],
                ..Changes::default()
            };
            outcomes.extend(s.apply(&device(), &changes, seq).unwrap());
        }
        let kept = s.anomalies(Some(&device())).unwrap();
        let mut seqs: Vec<_> = kept.iter().map(|a| a.seq.unwrap()).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, vec![0, 1, 2], "the first ones are the evidence kept");
        assert!(matches!(outcomes[2], Recorded::New(_)));
        let Recorded::Overflow(last) = &outcomes[999] else {
            panic!("{:?}", outcomes[999]);
        };
        assert_eq!(
            (last.count, last.first_seen_ms, last.last_seen_ms),
            (997, 3, 999)
        );
        assert_eq!(last.last_detail, "fork at 999");
        // A repeat of a kept one still counts in its row, not the overflow.
        let again = Changes {
            anomalies: vec![fork(1)],
            ..Changes::default()
        };
        assert_eq!(
            s.apply(&device(), &again, 2000).unwrap(),
            vec![Recorded::Repeat]
        );
        let overflow = s.anomaly_overflow(Some(&device())).unwrap();
        assert_eq!(overflow.len(), 1);
        assert_eq!(
            (overflow[0].kind, overflow[0].count),
            (AnomalyKind::Fork, 997)
        );
        // Other kinds and other devices have their own bound.
        let gap = Changes {
            anomalies: vec![NewAnomaly {
                kind: AnomalyKind::Gap,
                seq: Some(5),
                detail: "gap".into(),
                evidence: None,
            }],
            ..Changes::default()
        };
        assert!(matches!(
            s.apply(&device(), &gap, 1).unwrap()[0],
            Recorded::New(_)
        ));
        let other = DeviceId::new("d2").unwrap();
        let changes = Changes {
            anomalies: vec![fork(7)],
            ..Changes::default()
        };
        assert!(matches!(
            s.apply(&other, &changes, 1).unwrap()[0],
            Recorded::New(_)
        ));
        assert_eq!(s.anomaly_overflow(None).unwrap().len(), 1);
    }

    #[test]
    fn a_new_database_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        drop(SqliteStore::open(&path).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    /// Without WAL an ack could cover a batch a crash loses mid-checkpoint
    /// and readers would block ingestion: the collector refuses the file.
    #[test]
    fn a_database_that_cannot_be_put_in_wal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // No locking, no shared WAL index: SQLite keeps a rollback journal,
        // as on a network filesystem.
        let uri = format!("file:{}?nolock=1", dir.path().join("c.db").display());
        let conn = Connection::open(uri).unwrap();
        let err = StoreError::from(mctc_service::sqlite::configure(conn, &SCHEMA).unwrap_err());
        assert!(
            matches!(
                err,
                StoreError::Open(mctc_service::sqlite::OpenError::NotWal { .. })
            ),
            "{err}"
        );
    }

    /// A writer holding the lock past the busy timeout makes a write fail
    /// busy: transient, the collector's (not the device's), retried.
    #[test]
    fn a_write_behind_another_writers_lock_is_busy_and_transient() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let mut s = SqliteStore::open(&path)
            .unwrap()
            .with_busy_timeout(Duration::from_millis(20))
            .unwrap();
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE;").unwrap();
        let err = s.put_registry(&entry(1, b"a"), 1).unwrap_err();
        assert_eq!(err.fault(), Some(super::super::Fault::Busy), "{err}");
        assert!(err.is_transient());
        assert_eq!(err.kind(), "busy");
        // Readers are not blocked (WAL), and once the lock is gone the same
        // write goes through.
        assert_eq!(s.registry(&device()).unwrap(), None);
        other.execute_batch("ROLLBACK;").unwrap();
        assert_eq!(
            s.put_registry(&entry(1, b"a"), 2).unwrap(),
            RegistryChange::New
        );
    }

    /// A damaged table is the collector's failure and not transient.
    #[test]
    fn a_corrupt_table_is_a_lasting_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        corrupt_table(&path, "heads");
        let s = SqliteStore::open(&path).unwrap();
        let err = s.head(&device()).unwrap_err();
        assert_eq!(err.fault(), Some(super::super::Fault::Corrupt), "{err}");
        assert!(!err.is_transient());
        let moved = StoreError::HeadMoved {
            device: "d".into(),
            expected: 1,
            found: 2,
        };
        assert!(moved.is_transient(), "another writer: decided again later");
        assert!(!StoreError::Corrupt("x".into()).is_transient());
    }

    #[test]
    fn a_newer_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        drop(SqliteStore::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 3;")
            .unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::SchemaTooNew {
                    found: 3,
                    supported: 2
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_version_1_database_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        {
            // What a version 1 collector wrote (no 0600, no WAL check).
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(V1).unwrap();
            conn.execute_batch("PRAGMA user_version = 1;").unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert!(s.anomaly_overflow(None).unwrap().is_empty());
        let version: i64 = s
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn reopening_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        {
            let mut s = SqliteStore::open(&path).unwrap();
            let changes = Changes {
                head: Some(head(1)),
                records: vec![record(0)],
                ..Changes::default()
            };
            s.apply(&device(), &changes, 1).unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.head(&device()).unwrap(), Some(head(1)));
        let mode: String = s
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = s
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous = FULL");
    }
}

//! Reads for fleet views (the console): keyset pages of devices and counts
//! by standing. Nothing here writes; the rows are checked by the same
//! [`RawDevice::check`] as every other read.

use mctc_shim::messages::DeviceStatus;
use rusqlite::{Connection, params_from_iter, types::Value};

use super::rows::{DEVICE_COLUMNS, RawDevice};
use crate::store::{DeviceRecord, StoreError};

/// Which devices a page holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceQuery {
    /// Only ids strictly after this one (the previous page's last id).
    pub after: Option<String>,
    /// Only devices with this standing.
    pub status: Option<DeviceStatus>,
    /// Only ids starting with this text.
    pub id_prefix: Option<String>,
    /// At most this many (callers bound it; 0 reads nothing).
    pub limit: u32,
}

/// Devices by standing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts {
    /// Active.
    pub active: u64,
    /// Contained.
    pub contained: u64,
    /// Revoked.
    pub revoked: u64,
}

impl StatusCounts {
    /// Every device.
    pub fn total(&self) -> u64 {
        self.active + self.contained + self.revoked
    }
}

pub(super) fn devices_page(
    conn: &Connection,
    query: &DeviceQuery,
) -> Result<Vec<DeviceRecord>, StoreError> {
    let mut sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE 1 = 1");
    let mut args: Vec<Value> = Vec::new();
    if let Some(after) = &query.after {
        args.push(Value::Text(after.clone()));
        sql.push_str(&format!(" AND id > ?{}", args.len()));
    }
    if let Some(prefix) = query.id_prefix.as_deref().filter(|p| !p.is_empty()) {
        // A range on the primary key, not LIKE: it uses the index and has
        // no wildcard characters to escape. U+10FFFF sorts after every
        // character an id may hold (ids are ASCII tokens).
        args.push(Value::Text(prefix.to_owned()));
        sql.push_str(&format!(" AND id >= ?{}", args.len()));
        args.push(Value::Text(format!("{prefix}\u{10FFFF}")));
        sql.push_str(&format!(" AND id < ?{}", args.len()));
    }
    if let Some(status) = query.status {
        args.push(Value::Integer(i64::from(status.code())));
        sql.push_str(&format!(" AND status = ?{}", args.len()));
    }
    args.push(Value::Integer(i64::from(query.limit)));
    sql.push_str(&format!(" ORDER BY id LIMIT ?{}", args.len()));
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(args), RawDevice::from_row)?;
    let mut devices = Vec::new();
    for row in rows {
        devices.push(row?.check()?);
    }
    Ok(devices)
}

pub(super) fn status_counts(conn: &Connection) -> Result<StatusCounts, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT status, count(*) FROM devices GROUP BY status")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, u8>(0)?, r.get::<_, u64>(1)?)))?;
    let mut counts = StatusCounts::default();
    for row in rows {
        let (status, n) = row?;
        match DeviceStatus::from_code(status) {
            Some(DeviceStatus::Active) => counts.active = n,
            Some(DeviceStatus::Contained) => counts.contained = n,
            Some(DeviceStatus::Revoked) => counts.revoked = n,
            None => {
                return Err(StoreError::Corrupt(format!("device status code {status}")));
            }
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use mctc_shim::DeviceId;

    use super::{DeviceQuery, StatusCounts};
    use crate::now::Now;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{NewDevice, StatusChange, Store};

    fn ids(devices: &[crate::store::DeviceRecord]) -> Vec<&str> {
        devices.iter().map(|d| d.id.as_str()).collect()
    }

    #[test]
    fn pages_by_keyset_filter_and_count_and_never_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let now = Now::read().unwrap();
        {
            let mut store = SqliteStore::open(&path).unwrap();
            for id in ["a-1", "a-2", "b-1", "b-2", "b-3"] {
                let device = NewDevice {
                    id: DeviceId::new(id).unwrap(),
                    class: "c".into(),
                    pinned_ek_sha256: None,
                };
                store.add_device(&device, &now).unwrap();
            }
            let b2 = DeviceId::new("b-2").unwrap();
            store
                .change_status(&b2, StatusChange::Contain, "x", &now)
                .unwrap();
        }
        let mut reader = SqliteStore::open_read_only(&path).unwrap();
        let page = |after: Option<&str>, prefix: Option<&str>, status, limit| DeviceQuery {
            after: after.map(str::to_owned),
            id_prefix: prefix.map(str::to_owned),
            status,
            limit,
        };
        let first = reader.devices_page(&page(None, None, None, 2)).unwrap();
        assert_eq!(ids(&first), ["a-1", "a-2"]);
        let second = reader
            .devices_page(&page(Some("a-2"), None, None, 2))
            .unwrap();
        assert_eq!(ids(&second), ["b-1", "b-2"]);
        let b = reader
            .devices_page(&page(None, Some("b-"), None, 10))
            .unwrap();
        assert_eq!(ids(&b), ["b-1", "b-2", "b-3"]);
        let contained = mctc_shim::messages::DeviceStatus::Contained;
        let c = reader
            .devices_page(&page(None, None, Some(contained), 10))
            .unwrap();
        assert_eq!(ids(&c), ["b-2"]);
        assert_eq!(
            reader.status_counts().unwrap(),
            StatusCounts {
                active: 4,
                contained: 1,
                revoked: 0
            }
        );
        // The read-only store refuses every write.
        let d = DeviceId::new("a-1").unwrap();
        let err = reader
            .change_status(&d, StatusChange::Contain, "x", &now)
            .unwrap_err();
        assert_eq!(err.kind(), "read_only", "{err}");
        // And never creates a file.
        assert!(SqliteStore::open_read_only(&dir.path().join("none.db")).is_err());
        assert!(!dir.path().join("none.db").exists());
    }
}

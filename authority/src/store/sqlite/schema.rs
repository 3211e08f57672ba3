//! The schema and its migrations: `PRAGMA user_version` is the version,
//! each migration one step, run by `mctc_service::sqlite` in one
//! `BEGIN IMMEDIATE` at open.

use mctc_service::sqlite::Schema;

/// Schema migrations; `MIGRATIONS[i]` takes version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE devices (
    id TEXT PRIMARY KEY NOT NULL,
    class TEXT NOT NULL,
    status INTEGER NOT NULL CHECK (status IN (1, 2, 3)),
    reason TEXT,
    pinned_ek_sha256 BLOB CHECK (pinned_ek_sha256 IS NULL OR length(pinned_ek_sha256) = 32),
    ek_public BLOB,
    ek_sha256 BLOB CHECK (ek_sha256 IS NULL OR length(ek_sha256) = 32),
    ak_public BLOB,
    ak_name BLOB,
    added_ms INTEGER NOT NULL,
    enrolled_ms INTEGER,
    control_seq INTEGER NOT NULL DEFAULT 0,
    registry_version INTEGER NOT NULL DEFAULT 0,
    clock INTEGER,
    reset_count INTEGER,
    restart_count INTEGER,
    clock_safe INTEGER,
    pcr_mask INTEGER,
    pcr_values BLOB,
    verified_ms INTEGER,
    attempt_ms INTEGER,
    verdict TEXT,
    refusal TEXT,
    artifacts_issued INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE nonces (
    nonce BLOB PRIMARY KEY NOT NULL CHECK (length(nonce) = 32),
    device TEXT NOT NULL,
    purpose INTEGER NOT NULL,
    boot_id TEXT NOT NULL,
    deadline_ms INTEGER NOT NULL,
    issued_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX nonces_by_device ON nonces (device, issued_ms);

CREATE TABLE enrollments (
    device TEXT PRIMARY KEY NOT NULL,
    request_id BLOB NOT NULL CHECK (length(request_id) = 16),
    class TEXT NOT NULL,
    first_use INTEGER NOT NULL,
    proof BLOB NOT NULL CHECK (length(proof) = 32),
    ek_public BLOB NOT NULL,
    ek_sha256 BLOB NOT NULL CHECK (length(ek_sha256) = 32),
    ak_public BLOB NOT NULL,
    ak_name BLOB NOT NULL,
    boot_id TEXT NOT NULL,
    deadline_ms INTEGER NOT NULL
) STRICT;

CREATE TABLE fleet (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    hb_seq INTEGER NOT NULL,
    epoch INTEGER NOT NULL
) STRICT;
INSERT INTO fleet (id, hb_seq, epoch) VALUES (1, 0, 0);

CREATE TABLE revocations (
    epoch INTEGER PRIMARY KEY NOT NULL,
    device TEXT NOT NULL,
    wall_ms INTEGER NOT NULL,
    reason TEXT NOT NULL
) STRICT;

CREATE TABLE baselines (
    class TEXT NOT NULL,
    pcr INTEGER NOT NULL CHECK (pcr BETWEEN 0 AND 23),
    digest BLOB NOT NULL CHECK (length(digest) = 32),
    learned_from TEXT NOT NULL,
    learned_ms INTEGER NOT NULL,
    PRIMARY KEY (class, pcr, digest)
) STRICT;

CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind INTEGER NOT NULL,
    device TEXT NOT NULL,
    action INTEGER,
    seq INTEGER,
    reason TEXT,
    wall_ms INTEGER NOT NULL,
    claim_boot_id TEXT,
    claim_until_ms INTEGER
) STRICT;

CREATE TABLE leases (
    name TEXT PRIMARY KEY NOT NULL,
    holder TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    until_ms INTEGER NOT NULL
) STRICT;
"#,
    // Version 2: the broker authorizes each device by a role of its own
    // (the dynamic-security plugin); every device already known gets its
    // rights (or, if revoked, loses them) on the first run after the upgrade.
    r#"
INSERT INTO outbox (kind, device, wall_ms) SELECT 3, id, added_ms FROM devices;
"#,
    // Version 3: staged rollouts of a new accepted value set to a share of
    // a class (`policy stage`); at most one active per class.
    r#"
CREATE TABLE stages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    class TEXT NOT NULL,
    learned_from TEXT NOT NULL,
    pcr_mask INTEGER NOT NULL,
    pcr_values BLOB NOT NULL,
    share INTEGER NOT NULL CHECK (share BETWEEN 1 AND 100),
    stop_after INTEGER NOT NULL CHECK (stop_after >= 1),
    failures INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL CHECK (state IN ('active', 'stopped', 'promoted', 'rolled-back')),
    started_ms INTEGER NOT NULL,
    ended_ms INTEGER,
    end_reason TEXT
) STRICT;
CREATE UNIQUE INDEX stages_one_active ON stages (class) WHERE state = 'active';
"#,
    // Version 4: what the last refusal was about, for `devices show`: the
    // check in words, the PCRs the device was told (JSON array of
    // `mctc_shim::api::PcrStatus`), and since when refusals run.
    r#"
ALTER TABLE devices ADD COLUMN refusal_detail TEXT;
ALTER TABLE devices ADD COLUMN refusal_pcrs TEXT;
ALTER TABLE devices ADD COLUMN refused_since_ms INTEGER;
"#,
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The schema as the shared opener takes it.
pub const SCHEMA: Schema = Schema {
    migrations: MIGRATIONS,
};

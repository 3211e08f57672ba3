//! The console's router in-process (tower `oneshot`): every page and its
//! JSON twin over real SQLite stores written by the authority's and the
//! collector's own store code, plus the 4xx/503 paths. Operator requests
//! carry the `Peer` extension the TLS listener sets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use mctc_authority::now::Now;
use mctc_authority::store::sqlite::SqliteStore as AuthorityStore;
use mctc_authority::store::{NewDevice, PendingEnrollment, StatusChange, Store as _};
use mctc_collector::store::sqlite::SqliteStore as CollectorStore;
use mctc_collector::store::{Changes, Head, NewRecord, Store as _};
use mctc_console::config::StoresConfig;
use mctc_console::live::Live;
use mctc_console::server::{AppState, Peer, router};
use mctc_console::stores::Stores;
use mctc_shim::lineage::{
    Body as RecordBody, ChainHead, CloseCode, Decision, DenyCode, GateClosed, Stamp, VerdictCode,
};
use mctc_shim::tpm::BootCounters;
use mctc_shim::wire::{Bytes, Text, Token};
use mctc_shim::{DeviceId, RingCrypto};
use serde_json::Value;
use tower::ServiceExt as _;

const FLEET: usize = 16_000;

struct Fixture {
    _dir: tempfile::TempDir,
    authority: PathBuf,
    collector: PathBuf,
}

fn id(n: usize) -> String {
    format!("dev-{n:05}")
}

/// A directory on tmpfs where there is one: 16,000 registrations are
/// 16,000 fsynced transactions.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("mctc-console-")
            .tempdir_in(shm)
            .unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

fn fixture(devices: usize) -> Fixture {
    let dir = scratch();
    let authority = dir.path().join("authority.db");
    let collector = dir.path().join("collector.db");
    let now = Now::read().unwrap();
    {
        let mut a = AuthorityStore::open(&authority).unwrap();
        for n in 0..devices {
            let device = NewDevice {
                id: DeviceId::new(&id(n)).unwrap(),
                class: if n % 2 == 0 {
                    "locker".into()
                } else {
                    "terminal".into()
                },
                pinned_ek_sha256: None,
            };
            assert!(a.add_device(&device, &now).unwrap());
        }
        for n in [3, 7, 11] {
            let dev = DeviceId::new(&id(n)).unwrap();
            a.change_status(&dev, StatusChange::Contain, "<b>tamper</b>", &now)
                .unwrap();
        }
        // dev-00001 enrolls (fingerprints on its page).
        let dev = DeviceId::new(&id(1)).unwrap();
        let pending = PendingEnrollment {
            device: dev.clone(),
            request_id: [1; 16],
            class: "terminal".into(),
            first_use: false,
            proof: [2; 32],
            ek_public: b"ek-public".to_vec(),
            ek_sha256: [0xee; 32],
            ak_public: b"ak-public".to_vec(),
            ak_name: vec![0x00, 0x0b, 0xaa],
            deadline: now.after(60_000),
        };
        a.begin_enrollment(&pending).unwrap();
        a.commit_enrollment(&pending, &now).unwrap();
    }
    {
        let mut c = CollectorStore::open(&collector).unwrap();
        seed_lineage(&mut c, &DeviceId::new(&id(1)).unwrap(), 300);
    }
    Fixture {
        _dir: dir,
        authority,
        collector,
    }
}

/// `count` records: every 10th a denied refund, every 25th a gate close,
/// the rest permitted captures.
fn seed_lineage(c: &mut CollectorStore, device: &DeviceId, count: u64) {
    let mut chain = ChainHead::genesis(device.clone());
    let mut records = Vec::new();
    for n in 0..count {
        let stamp = Stamp {
            boot: BootCounters {
                reset: 1,
                restart: 0,
            },
            mono_ms: 1_000 + n,
            wall_ms: Some(1_700_000_000_000 + n * 1000),
        };
        let reference = format!("ref-{n}");
        let body = if n % 25 == 24 {
            RecordBody::GateClosed(GateClosed {
                reason: CloseCode::Drift,
                detail: Some(1),
            })
        } else if n % 10 == 9 {
            RecordBody::Decision(Decision {
                op: Token("refund"),
                amount: Some(n),
                currency: None,
                reference: Some(Text(&reference)),
                verdict: VerdictCode::Deny,
                deny: Some(DenyCode::OverLimit),
                cti: Some(Bytes([7; 16])),
            })
        } else {
            RecordBody::Decision(Decision {
                op: Token("capture"),
                amount: Some(100 + n),
                currency: None,
                reference: Some(Text(&reference)),
                verdict: VerdictCode::Permit,
                deny: None,
                cti: Some(Bytes([7; 16])),
            })
        };
        let kind = body.kind().code();
        let mut buf = [0u8; 2048];
        let appended = chain.append(&RingCrypto, stamp, body, &mut buf).unwrap();
        records.push(NewRecord {
            seq: appended.seq,
            hash: appended.hash,
            kind,
            boot: stamp.boot,
            mono_ms: stamp.mono_ms,
            wall_ms: stamp.wall_ms,
            bytes: appended.bytes.to_vec(),
        });
    }
    let changes = Changes {
        expected_next: 0,
        head: Some(Head {
            next_seq: count,
            hash: *chain.head(),
            last_boot: Some(BootCounters {
                reset: 1,
                restart: 0,
            }),
            last_mono_ms: 1_000 + count,
            last_quote_clock: None,
        }),
        records,
        ..Changes::default()
    };
    c.apply(device, &changes, 1).unwrap();
}

fn state(f: &Fixture) -> Arc<AppState> {
    let live = Live::new(true);
    Arc::new(AppState {
        stores: Stores::new(&StoresConfig {
            authority: f.authority.clone(),
            collector: f.collector.clone(),
        }),
        live,
        silent_after_secs: 60,
    })
}

fn status_json(
    device: &str,
    state: &str,
    reason: &str,
    detail: Option<&str>,
    wall_ms: u64,
) -> String {
    serde_json::json!({
        "v": 1, "device": device, "online": true, "connected": true, "state": state,
        "reason": reason, "detail": detail, "session": 1, "tpm": "ok", "version": "test",
        "wall_ms": wall_ms, "heartbeat_seq": 5,
        "lineage": {"backlog": 0, "health": "ok", "next_seq": 10, "quota_bytes": 1, "records": 1,
                    "rejected_receipts": 0, "syncs": 1, "used_bytes": 1}
    })
    .to_string()
}

struct Answer {
    status: StatusCode,
    body: String,
    ms: u128,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn get(state: &Arc<AppState>, uri: &str, operator: Option<&str>) -> Answer {
    let mut request = Request::builder().uri(uri);
    if let Some(op) = operator {
        request = request.extension(Peer {
            operator: Some(op.to_owned()),
        });
    }
    let start = Instant::now();
    let response = router(Arc::clone(state))
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    Answer {
        status,
        body: String::from_utf8(body.to_vec()).unwrap(),
        ms: start.elapsed().as_millis(),
    }
}

const OP: Option<&str> = Some("alice");

fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_pages_16000_devices_by_keyset_and_filters() {
    let f = fixture(FLEET);
    let before = (file_bytes(&f.authority), file_bytes(&f.collector));
    let s = state(&f);
    let now = mctc_console::live::now_ms();
    s.live.on_status(
        "mctc/v1/dev/dev-00001/status",
        status_json("dev-00001", "open", "artifact-valid", None, now).as_bytes(),
        now,
    );
    s.live.on_status(
        "mctc/v1/dev/dev-00002/status",
        status_json("dev-00002", "closed", "drift", Some("drift-pcr"), now).as_bytes(),
        now,
    );
    s.live.on_status(
        "mctc/v1/dev/dev-00004/status",
        status_json("dev-00004", "closed", "drift", None, now - 600_000).as_bytes(),
        now,
    );

    // Page 1, HTML and JSON.
    let page = get(&s, "/", OP).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("dev-00000") && page.body.contains("dev-00049"));
    assert!(!page.body.contains("dev-00050"), "page 1 holds 50 rows");
    assert!(
        page.body
            .contains("href=\"/?after=dev-00049&amp;limit=50\""),
        "next link"
    );
    let json = get(&s, "/api/v1/fleet", OP).await;
    assert_eq!(json.status, StatusCode::OK);
    let v = json.json();
    assert_eq!(v["totals"]["devices"], FLEET as u64);
    assert_eq!(v["totals"]["contained"], 3);
    assert_eq!(v["gates"]["open"], 1);
    assert_eq!(v["gates"]["closed"], 2);
    assert_eq!(v["gates"]["unknown"], FLEET as u64 - 3);
    assert_eq!(v["close_reasons"][0]["reason"], "drift");
    assert_eq!(v["close_reasons"][0]["count"], 2);
    assert_eq!(v["silent_count"], 1, "dev-00004's status is 600 s old");
    assert_eq!(v["silent"][0], "dev-00004");
    assert_eq!(v["devices"].as_array().unwrap().len(), 50);
    assert_eq!(v["next"], "dev-00049");
    assert_eq!(v["devices"][1]["gate"]["state"], "open");

    // Keyset: page 2 starts after the cursor; the last page has no next.
    let p2 = get(&s, "/api/v1/fleet?after=dev-00049", OP).await.json();
    assert_eq!(p2["devices"][0]["id"], "dev-00050");
    let last = get(
        &s,
        &format!("/api/v1/fleet?after={}&limit=10", id(FLEET - 5)),
        OP,
    )
    .await
    .json();
    assert_eq!(last["devices"].as_array().unwrap().len(), 4);
    assert_eq!(last["next"], Value::Null);

    // Filters: standing, id prefix, live gate.
    let contained = get(&s, "/api/v1/fleet?status=contained", OP).await;
    let ids: Vec<&str> = contained.json()["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned().leak() as &str)
        .collect();
    assert_eq!(ids, ["dev-00003", "dev-00007", "dev-00011"]);
    let prefix = get(&s, "/?q=dev-1500", OP).await;
    assert_eq!(prefix.status, StatusCode::OK);
    assert!(prefix.body.contains("dev-15000") && prefix.body.contains("dev-15009"));
    assert!(!prefix.body.contains("dev-00000"));
    let open = get(&s, "/api/v1/fleet?gate=open", OP).await.json();
    assert_eq!(open["devices"].as_array().unwrap().len(), 1);
    assert_eq!(open["devices"][0]["id"], "dev-00001");
    // The contain reason is operator text: escaped on the page.
    let page3 = get(&s, "/?status=contained", OP).await;
    assert!(page3.body.contains("&lt;b&gt;tamper&lt;/b&gt;"));
    assert!(!page3.body.contains("<b>tamper</b>"));

    // Timings over a warm connection (debug build; the bench measures release).
    let mut worst = 0;
    for uri in [
        "/",
        "/?status=contained",
        "/?q=dev-1500",
        "/?gate=closed",
        "/api/v1/fleet",
    ] {
        let a = get(&s, uri, OP).await;
        assert_eq!(a.status, StatusCode::OK);
        println!("{uri}: {} ms", a.ms);
        worst = worst.max(a.ms);
    }
    assert!(
        worst < 2_000,
        "a dashboard page over {FLEET} devices took {worst} ms"
    );

    // Nothing was written to either database.
    drop(s);
    assert!(
        before == (file_bytes(&f.authority), file_bytes(&f.collector)),
        "the console wrote"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn device_page_shows_standing_fingerprints_and_escapes_device_text() {
    let f = fixture(20);
    let s = state(&f);
    let now = mctc_console::live::now_ms();
    s.live.on_status(
        "mctc/v1/dev/dev-00001/status",
        status_json(
            "dev-00001",
            "closed",
            "drift",
            Some("<script>alert(1)</script>"),
            now,
        )
        .as_bytes(),
        now,
    );
    let page = get(&s, "/devices/dev-00001", OP).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(
        !page.body.contains("<script>alert"),
        "device text must be escaped"
    );
    assert!(page.body.contains(&"ee".repeat(32)), "EK fingerprint");
    assert!(page.body.contains("operator: <b>alice</b>"));
    let v = get(&s, "/api/v1/devices/dev-00001", OP).await.json();
    assert_eq!(v["status"], "active");
    assert_eq!(v["enrollment"]["ek_sha256"], "ee".repeat(32));
    assert_eq!(v["enrollment"]["ak_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(v["lineage"]["records"], 300);
    assert_eq!(v["gate"]["state"], "closed");
    assert_eq!(v["gate"]["detail"], "<script>alert(1)</script>");
    let contained = get(&s, "/api/v1/devices/dev-00003", OP).await.json();
    assert_eq!(contained["status"], "contained");
    assert_eq!(contained["reason"], "<b>tamper</b>");
    assert_eq!(contained["enrollment"], Value::Null);
    // A status naming another device than its topic is not shown.
    assert!(!s.live.on_status(
        "mctc/v1/dev/dev-00005/status",
        status_json("dev-00006", "open", "artifact-valid", None, now).as_bytes(),
        now
    ));
    assert_eq!(
        get(&s, "/api/v1/devices/dev-00005", OP).await.json()["gate"],
        Value::Null
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lineage_explorer_pages_by_seq_links_predecessors_and_filters() {
    let f = fixture(5);
    let s = state(&f);
    let v = get(&s, "/api/v1/devices/dev-00001/lineage", OP)
        .await
        .json();
    let records = v["records"].as_array().unwrap();
    assert_eq!(records.len(), 50);
    assert_eq!(records[0]["seq"], 0);
    assert_eq!(records[0]["prev"], "00".repeat(32));
    for pair in records.windows(2) {
        assert_eq!(
            pair[1]["prev"], pair[0]["hash"],
            "each record links its predecessor by hash"
        );
    }
    assert_eq!(v["next"], 49);
    assert_eq!(records[0]["op"], "capture");
    assert_eq!(records[0]["reference"], "ref-0");
    assert_eq!(records[0]["artifact"], "07".repeat(16));
    let p2 = get(
        &s,
        "/api/v1/devices/dev-00001/lineage?after=49&limit=10",
        OP,
    )
    .await
    .json();
    assert_eq!(p2["records"][0]["seq"], 50);
    assert_eq!(p2["records"][0]["prev"], records[49]["hash"]);
    let deny = get(
        &s,
        "/api/v1/devices/dev-00001/lineage?kind=decision&verdict=deny&op=refund&limit=200",
        OP,
    )
    .await
    .json();
    let seqs: Vec<u64> = deny["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 24, "{seqs:?}");
    assert!(seqs.iter().all(|s| s % 10 == 9 && s % 25 != 24));
    assert_eq!(deny["next"], Value::Null);
    let closes = get(&s, "/api/v1/devices/dev-00001/lineage?kind=gate-closed", OP)
        .await
        .json();
    assert_eq!(closes["records"].as_array().unwrap().len(), 12);
    assert_eq!(closes["records"][0]["gate"], "closed: drift");
    let window = get(
        &s,
        "/api/v1/devices/dev-00001/lineage?from_ms=1700000010000&to_ms=1700000020000",
        OP,
    )
    .await
    .json();
    let seqs: Vec<u64> = window["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (10..20).collect::<Vec<u64>>());
    // HTML: rows anchored by seq, each linking its predecessor.
    let page = get(&s, "/devices/dev-00001/lineage?after=9&limit=5", OP).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("id=\"seq-10\""));
    assert!(
        page.body
            .contains("href=\"/devices/dev-00001/lineage?after=8#seq-9\""),
        "{}",
        page.body
    );
    // A device the collector holds nothing for: an empty page, not an error.
    let empty = get(&s, "/api/v1/devices/dev-00002/lineage", OP)
        .await
        .json();
    assert_eq!(empty["records_stored"], 0);
    assert_eq!(empty["next"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_4xx_never_a_page() {
    let f = fixture(5);
    let s = state(&f);
    let long = format!("/?q={}", "a".repeat(3000));
    let cases: &[(&str, StatusCode)] = &[
        ("/devices/dev-99999", StatusCode::NOT_FOUND),
        ("/api/v1/devices/dev-99999", StatusCode::NOT_FOUND),
        ("/api/v1/devices/dev-99999/lineage", StatusCode::NOT_FOUND),
        ("/devices/..%2F..%2Fetc%2Fpasswd", StatusCode::BAD_REQUEST),
        (
            "/api/v1/devices/..%2F..%2Fetc%2Fpasswd/lineage",
            StatusCode::BAD_REQUEST,
        ),
        ("/devices/../../etc/passwd", StatusCode::NOT_FOUND),
        ("/static/../../etc/passwd", StatusCode::NOT_FOUND),
        ("/devices/DEV%00", StatusCode::BAD_REQUEST),
        ("/api/v1/fleet?after=%00x", StatusCode::BAD_REQUEST),
        ("/api/v1/fleet?after=..%2F", StatusCode::BAD_REQUEST),
        ("/api/v1/fleet?limit=0", StatusCode::BAD_REQUEST),
        ("/api/v1/fleet?limit=100000", StatusCode::BAD_REQUEST),
        ("/api/v1/fleet?status=bogus", StatusCode::BAD_REQUEST),
        ("/api/v1/fleet?gate=ajar", StatusCode::BAD_REQUEST),
        ("/api/v1/fleet?q=%3Cscript%3E", StatusCode::BAD_REQUEST),
        ("/api/v1/fleet?unknown=1", StatusCode::BAD_REQUEST),
        (
            "/api/v1/devices/dev-00001/lineage?after=-1",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/devices/dev-00001/lineage?after=abc",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/devices/dev-00001/lineage?after=18446744073709551615",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/devices/dev-00001/lineage?kind=nope",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/devices/dev-00001/lineage?verdict=maybe",
            StatusCode::BAD_REQUEST,
        ),
        ("/api/v1/nothing", StatusCode::NOT_FOUND),
        (&long, StatusCode::URI_TOO_LONG),
    ];
    for (uri, want) in cases {
        let a = get(&s, uri, OP).await;
        assert_eq!(a.status, *want, "{uri}: {}", a.body);
        assert!(!a.body.contains("root:"), "{uri}");
        if uri.starts_with("/api/") {
            assert!(
                a.json()["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{uri}: {}",
                a.body
            );
        } else {
            assert!(a.body.contains("class=\"err\""), "{uri}: {}", a.body);
        }
    }
    // Operator pages without an operator certificate: 403, nothing shown.
    for uri in [
        "/",
        "/api/v1/fleet",
        "/devices/dev-00001",
        "/api/v1/devices/dev-00001",
        "/devices/dev-00001/lineage",
        "/api/v1/devices/dev-00001/lineage",
        "/events",
    ] {
        let a = get(&s, uri, None).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{uri}");
        assert!(
            !a.body.contains("dev-00001"),
            "{uri} leaked data: {}",
            a.body
        );
    }
    // Public: the health check and the script.
    assert_eq!(get(&s, "/healthz", None).await.status, StatusCode::OK);
    let js = get(&s, "/static/console.js", None).await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(js.body.contains("EventSource"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_locked_or_missing_database_is_a_503_with_one_line() {
    let f = fixture(5);
    // Another process holds the authority's database exclusively.
    let holder = rusqlite::Connection::open(&f.authority).unwrap();
    holder
        .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; UPDATE fleet SET epoch = epoch WHERE id = 1;")
        .unwrap();
    let s = state(&f);
    for uri in ["/api/v1/fleet", "/"] {
        let a = get(&s, uri, OP).await;
        assert_eq!(
            a.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{uri}: {}",
            a.body
        );
        assert!(a.body.contains("authority database"), "{}", a.body);
    }
    holder.execute_batch("COMMIT").unwrap();
    drop(holder);
    // Released: the next request reads (the failed connection was dropped).
    assert_eq!(get(&s, "/api/v1/fleet", OP).await.status, StatusCode::OK);

    // A path that holds no database.
    let missing = Arc::new(AppState {
        stores: Stores::new(&StoresConfig {
            authority: f.authority.with_file_name("absent.db"),
            collector: f.collector.clone(),
        }),
        live: Live::new(false),
        silent_after_secs: 60,
    });
    let a = get(&missing, "/api/v1/fleet", OP).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert!(
        !f.authority.with_file_name("absent.db").exists(),
        "the console created a file"
    );
}

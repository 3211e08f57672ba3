//! Fleet observability end to end, with the real binaries and broker:
//! `/metrics` of the authority and the collector (counters that move when a
//! gate opens and when evidence is refused, garbage requests refused while
//! the server stays up, the shipped Grafana dashboard asking only for what
//! the services expose) and the services' retained status with its Last
//! Will (a device cannot overwrite it).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use mctc_service::metrics::{CONTENT_TYPE, MAX_CONNECTIONS};
use mctc_tests::fleet::{Fleet, MEASURED_PCR, MqttClient, PATIENCE, wait_all_acked};
use mctc_tests::scrape::{self, families, samples, value};
use mctc_tests::wait_until;
use serde_json::Value;

/// A scrape that must succeed, as Prometheus would see it.
fn scrape(addr: SocketAddr) -> String {
    let answer = scrape::get_metrics(addr).expect("an answer to GET /metrics");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("content-type"), Some(CONTENT_TYPE));
    assert!(answer.body.ends_with("# EOF\n"), "{}", answer.body);
    assert_eq!(answer.body.matches("# EOF").count(), 1);
    answer.body
}

fn eventually(what: &str, addr: SocketAddr, mut ok: impl FnMut(&str) -> bool) -> String {
    let mut last = String::new();
    let done = wait_until(PATIENCE, || {
        last = scrape(addr);
        ok(&last)
    });
    assert!(done.is_some(), "{what} never held; last scrape:\n{last}");
    last
}

/// Every metric name the dashboard's queries use.
fn dashboard_metrics() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/grafana/mctc-fleet.json");
    let json: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut names = BTreeSet::new();
    let panels = json["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(at) = rest.find("mctc_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                names.insert(name);
            }
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    names
}

/// Whether `name` is exposed: a sample of that name, or a counter/info
/// sample of a declared family (`_total`, `_info`) that has no sample yet.
fn exposed(expositions: &[&str], name: &str) -> bool {
    expositions.iter().any(|body| {
        samples(body).iter().any(|(n, _, _)| n == name)
            || [name.strip_suffix("_total"), name.strip_suffix("_info")]
                .into_iter()
                .flatten()
                .any(|family| families(body).iter().any(|f| f == family))
    })
}

/// The test policy plus class `raw`: the same PCRs without any reference
/// value, so every piece of its devices' evidence is refused `no-baseline`
/// (a refusal without provoking drift, whose owner is chaos).
fn policy_with_an_unlearned_class() -> String {
    mctc_tests::fleet::test_policy()
        + &format!(
            "[classes.raw]\npcrs = [0, 7, {MEASURED_PCR}]\nartifact_ttl_ms = 60000\nheartbeat_ms = 3000\n\
             [[classes.raw.scope]]\nop = \"unlock\"\nfresh_attestation = false\n"
        )
}

#[test]
fn metrics_move_with_the_fleet_and_garbage_is_refused() {
    let mut fleet = Fleet::with_policy(&policy_with_an_unlearned_class());
    fleet.start_authority();
    fleet.start_collector();
    let authority = fleet.authority_metrics();
    let collector = fleet.collector_metrics();
    assert!(authority.ip().is_loopback() && collector.ip().is_loopback());

    // Before any device: nothing issued, nothing stored.
    let before = eventually("the heartbeat leadership", authority, |b| {
        value(b, "mctc_authority_heartbeat_leader", "") == 1.0
    });
    assert_eq!(
        value(&before, "mctc_authority_artifacts_issued_total", ""),
        0.0
    );
    assert_eq!(value(&before, "mctc_authority_enrollments_total", ""), 0.0);
    assert!(before.contains("mctc_build_info{binary=\"mctc-authority\",version=\""));
    let seq_before = value(&before, "mctc_authority_heartbeat_seq", "");
    let stored_before = scrape(collector);
    assert_eq!(
        value(&stored_before, "mctc_collector_records_accepted_total", ""),
        0.0
    );
    assert_eq!(
        value(&stored_before, "mctc_collector_ingest_lag_ms", ""),
        -1.0
    );

    // A device's gate opens, one permit reaches the collector.
    let mut device = fleet.device("obs-1", "locker");
    device.bring_up();
    assert!(device.permits());
    wait_all_acked(&fleet, &device);

    let after = eventually("the artifact and the enrollment counted", authority, |b| {
        value(b, "mctc_authority_artifacts_issued_total", "") >= 1.0
            && value(b, "mctc_authority_enrollments_total", "result=\"ok\"") >= 1.0
    });
    // The leader keeps beating: its seq moves on.
    eventually("the heartbeat seq moving on", authority, |b| {
        value(b, "mctc_authority_heartbeat_seq", "") > seq_before
    });
    assert!(value(&after, "mctc_authority_heartbeats_total", "") >= 1.0);
    assert_eq!(value(&after, "mctc_authority_refusals_total", ""), 0.0);
    let stored = eventually("the lineage counted", collector, |b| {
        value(b, "mctc_collector_records_accepted_total", "") >= 2.0
            && value(b, "mctc_collector_batches_accepted_total", "") >= 1.0
    });
    let lag = value(&stored, "mctc_collector_ingest_lag_ms", "");
    assert!((0.0..60_000.0).contains(&lag), "lag {lag}");
    let age = value(&stored, "mctc_collector_record_age_ms", "");
    assert!(age == -1.0 || (0.0..60_000.0).contains(&age), "age {age}");
    assert_eq!(value(&stored, "mctc_collector_anomalies_total", ""), 0.0);

    // A device of a class without a baseline: its evidence is refused,
    // and counted by reason; its gate never opens.
    let mut raw = fleet.device("obs-raw", "raw");
    raw.enroll();
    raw.start();
    eventually("the refusal counted by reason", authority, |b| {
        value(b, "mctc_authority_refusals_total", "reason=\"no-baseline\"") >= 1.0
    });
    assert!(!raw.permits());

    // What a scrape costs (printed for the record, not asserted).
    let start = std::time::Instant::now();
    for _ in 0..100 {
        scrape(authority);
    }
    eprintln!(
        "100 authority scrapes: {:?} ({} bytes each)",
        start.elapsed(),
        scrape(authority).len()
    );

    // The dashboard asks only for what the two services expose.
    let exposed_now = [scrape(authority), scrape(collector)];
    let bodies = [exposed_now[0].as_str(), exposed_now[1].as_str()];
    for name in dashboard_metrics() {
        assert!(
            exposed(&bodies, &name),
            "the dashboard queries {name}, which no service exposes"
        );
    }
    assert!(
        !exposed(&bodies, "mctc_authority_no_such_metric_total"),
        "the exposure check cannot fail"
    );

    // Garbage gets an error answer (or a closed connection), never a
    // crash; the server keeps serving.
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
    huge.extend(vec![b'a'; 16 * 1024]);
    huge.extend_from_slice(b"\r\n\r\n");
    let cases: [(&[u8], u16); 7] = [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET /metricsX HTTP/1.1\r\n\r\n", 404),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET /metrics HTTP/9.9\r\n\r\n", 400),
        (&huge, 431),
    ];
    for addr in [authority, collector] {
        for (request, status) in &cases {
            let answer = scrape::raw(addr, request).expect("an answer");
            assert_eq!(
                answer.status,
                *status,
                "{:?}",
                String::from_utf8_lossy(&request[..request.len().min(40)])
            );
            assert!(
                !answer.body.contains("mctc_"),
                "no metrics to a bad request"
            );
        }
        // Half a request, then gone.
        let mut half = TcpStream::connect(addr).unwrap();
        half.write_all(b"GET /metr").unwrap();
        drop(half);
        // More idle connections than the server serves at once: they time
        // out and a scrape still gets through.
        let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS + 4)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        let body = scrape(addr);
        assert!(body.contains("mctc_build_info"));
        drop(idle);
        let head = scrape::raw(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
    }
    assert!(
        fleet.authority.as_mut().unwrap().try_status().is_none(),
        "authority died"
    );
    assert!(
        fleet.collector.as_mut().unwrap().try_status().is_none(),
        "collector died"
    );
}

fn statuses(client: &MqttClient, role: &str) -> Vec<(String, Value, bool)> {
    let prefix = format!("mctc/v1/service/{role}/");
    client
        .received()
        .into_iter()
        .filter(|(topic, _, _)| topic.starts_with(&prefix) && topic.ends_with("/status"))
        .map(|(topic, payload, retain)| (topic, serde_json::from_slice(&payload).unwrap(), retain))
        .collect()
}

/// Kills the authority with no agent running (no gate): only its Last Will
/// is watched (`chaos/owners.rs` lists this exception).
#[test]
fn service_status_is_retained_with_a_last_will_and_devices_cannot_forge_it() {
    let mut fleet = Fleet::new();
    fleet.start_authority();
    fleet.start_collector();
    // The shipped monitor identity reads every service's status.
    let monitor = MqttClient::connect(
        &fleet.broker,
        "mctc-monitor",
        "monitor-1",
        &["mctc/v1/service/+/+/status", "mctc/v1/dev/+/status"],
    );
    let online = |client: &MqttClient, role: &str| {
        statuses(client, role)
            .last()
            .is_some_and(|(_, s, _)| s["state"] == "online")
    };
    assert!(
        wait_until(PATIENCE, || online(&monitor, "authority")
            && online(&monitor, "collector"))
        .is_some(),
        "{:?}",
        monitor.received()
    );
    assert!(
        wait_until(PATIENCE, || statuses(&monitor, "authority")
            .last()
            .is_some_and(|(_, s, _)| s["leader"] == true))
        .is_some(),
        "the authority's status never said it leads: {:?}",
        statuses(&monitor, "authority")
    );
    let (topic, status, _) = statuses(&monitor, "authority").pop().unwrap();
    assert_eq!(status["v"], 1);
    assert_eq!(status["role"], "authority");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["started"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(
        topic,
        format!(
            "mctc/v1/service/authority/{}/status",
            status["instance"].as_str().unwrap()
        )
    );
    let collector_status = statuses(&monitor, "collector").pop().unwrap().1;
    assert!(collector_status.get("leader").is_none());

    // A device's certificate cannot overwrite it: its forgery is dropped
    // by the broker. Its own status, published after, proves the broker
    // has handled the forgery (one client's publishes stay in order).
    let forger = MqttClient::connect(&fleet.broker, "obs-forger", "obs-forger", &[]);
    let forged =
        br#"{"v":1,"state":"offline","role":"authority","instance":"x","version":"0","started":0}"#;
    forger.publish(&topic, forged, true);
    forger.publish("mctc/v1/dev/obs-forger/status", b"{}", true);
    assert!(
        wait_until(PATIENCE, || monitor
            .received()
            .iter()
            .any(|(t, _, _)| t == "mctc/v1/dev/obs-forger/status"))
        .is_some(),
        "the device's own status never arrived"
    );
    assert!(
        !monitor
            .received()
            .iter()
            .any(|(_, p, _)| p.as_slice() == forged),
        "the forgery reached a monitor"
    );
    let late = MqttClient::connect(
        &fleet.broker,
        "mctc-monitor",
        "monitor-2",
        &[topic.as_str()],
    );
    assert!(
        wait_until(PATIENCE, || !late.received().is_empty()).is_some(),
        "no retained status for a late monitor"
    );
    let retained = statuses(&late, "authority");
    assert_eq!(retained.len(), 1, "{retained:?}");
    assert_eq!(retained[0].1["state"], "online", "{retained:?}");
    assert!(retained[0].2, "delivered as retained");

    // The authority dies without a word: the broker says offline for it.
    fleet.kill_authority();
    assert!(
        wait_until(PATIENCE, || statuses(&monitor, "authority")
            .last()
            .is_some_and(|(t, s, _)| *t == topic && s["state"] == "offline"))
        .is_some(),
        "no Last Will: {:?}",
        statuses(&monitor, "authority")
    );
    // The collector stops cleanly (SIGTERM): it says offline itself.
    let collector = fleet.collector.as_ref().unwrap();
    collector.signal(rustix::process::Signal::TERM).unwrap();
    assert!(
        wait_until(PATIENCE, || statuses(&monitor, "collector")
            .last()
            .is_some_and(|(_, s, _)| s["state"] == "offline"))
        .is_some(),
        "a clean stop left the collector online: {:?}\n{}",
        statuses(&monitor, "collector"),
        fleet.collector_log()
    );
    assert!(
        fleet
            .collector
            .as_mut()
            .unwrap()
            .wait_timeout(Duration::from_secs(10))
            .is_some()
    );
}

/// One journal entry: its fields in order.
type Entry = Vec<(String, String)>;

/// Splits a native-protocol datagram into its fields.
fn journal_fields(mut bytes: &[u8]) -> Entry {
    let mut out = Vec::new();
    while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
        let line = &bytes[..end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            out.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            ));
            bytes = &bytes[end + 1..];
        } else {
            let rest = &bytes[end + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            out.push((
                String::from_utf8_lossy(line).into_owned(),
                String::from_utf8_lossy(&rest[8..8 + len]).into_owned(),
            ));
            bytes = &rest[8 + len + 1..];
        }
    }
    out
}

#[test]
fn under_systemd_a_gate_closed_event_reaches_journald_with_priority_and_message_id() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::UnixDatagram;
    use std::sync::{Arc, Mutex};

    let mut fleet = Fleet::new();
    fleet.start_authority();
    let mut device = fleet.device("obs-journal", "locker");
    device.enroll();

    // A journald of our own: every datagram kept, read as it comes so the
    // agent never blocks on a full socket.
    let journal_path = device.dir.path().join("journal.socket");
    let journal = UnixDatagram::bind(&journal_path).unwrap();
    let entries: Arc<Mutex<Vec<Entry>>> = Arc::default();
    let sink = Arc::clone(&entries);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 17];
        while let Ok(n) = journal.recv(&mut buf) {
            sink.lock().unwrap().push(journal_fields(&buf[..n]));
        }
    });

    // Started as systemd starts a service: JOURNAL_STREAM names its stderr.
    let log = device.log_path();
    std::fs::File::create(&log).unwrap();
    let meta = std::fs::metadata(&log).unwrap();
    let mut command = std::process::Command::new(mctc_tests::bin_path("mctc-agent").unwrap());
    command
        .args(["run", "--config", device.config.to_str().unwrap()])
        .env("MCTC_LOG", "info")
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env(mctc_service::logging::JOURNAL_SOCKET_ENV, &journal_path);
    device.agent = Some(mctc_tests::Proc::spawn_command("mctc-agent", command, &log).unwrap());
    device.wait_open();

    // A clean stop closes the gate (reason shutdown) before the agent exits.
    device.stop();
    let closed_id = mctc_service::logging::message_id("gate closed").unwrap();
    let find = |message: &str| {
        entries
            .lock()
            .unwrap()
            .iter()
            .find(|e| {
                e.iter()
                    .any(|(k, v)| k == "MESSAGE" && v.starts_with(message))
            })
            .cloned()
    };
    assert!(
        wait_until(PATIENCE, || find("gate closed").is_some()).is_some(),
        "no gate-closed entry; the journal got: {:?}",
        entries.lock().unwrap()
    );
    let closed = find("gate closed").unwrap();
    let get = |k: &str| {
        closed
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("PRIORITY").as_deref(), Some("4"), "{closed:?}");
    assert_eq!(get("MESSAGE_ID").as_deref(), Some(closed_id), "{closed:?}");
    assert_eq!(get("DEVICE").as_deref(), Some("obs-journal"), "{closed:?}");
    assert_eq!(get("SYSLOG_IDENTIFIER").as_deref(), Some("mctc-agent"));
    assert_eq!(get("REASON").as_deref(), Some("shutdown"), "{closed:?}");
    // The open gate logged at info, with its own id; routine lines have none.
    let opened = find("gate opened").expect("gate opened entry");
    assert!(opened.iter().any(|(k, v)| k == "PRIORITY" && v == "6"));
    assert!(
        opened
            .iter()
            .any(|(k, v)| k == "MESSAGE_ID" && v != closed_id)
    );
    let running = find("mctc-agent running").expect("start entry");
    assert!(!running.iter().any(|(k, _)| k == "MESSAGE_ID"));
    // Nothing went to stderr twice.
    assert!(!device.log().contains("gate closed"), "{}", device.log());
}

//! The fleet heartbeat: signed, about every hb_ms/3, seq strictly increasing
//! across clean and unclean restarts (the high-water mark is in the
//! database).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use mctc_shim::RingCrypto;
use mctc_shim::gate::verify_heartbeat;
use mctc_shim::messages::Heartbeat;
use mctc_shim::topics::HEARTBEAT;

async fn next_heartbeat(fleet: &Fleet, monitor: &mut Client) -> Heartbeat {
    let bytes = monitor
        .next_on(HEARTBEAT, ANSWER)
        .await
        .expect("a heartbeat");
    verify_heartbeat(&bytes, &fleet.keys(), &RingCrypto)
        .unwrap()
        .message()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_seq_keeps_increasing_across_restarts() {
    let mut fleet = Fleet::new();
    let mut monitor = fleet.client("mctc-monitor", &[HEARTBEAT]).await;
    let first = fleet.start();

    let mut last = next_heartbeat(&fleet, &mut monitor).await;
    let started = Instant::now();
    let first_seq = last.seq;
    for _ in 0..4 {
        let hb = next_heartbeat(&fleet, &mut monitor).await;
        assert!(hb.seq > last.seq, "{} after {}", hb.seq, last.seq);
        assert_eq!(hb.hb_ms, 6000, "the longest class window");
        assert_eq!((hb.epoch, hb.since_epoch), (0, 0));
        assert!(hb.revoked.is_empty());
        last = hb;
    }
    // hb_ms/3 of the shortest class (3000 ms) = 1000 ms.
    let per_beat = started.elapsed() / u32::try_from(last.seq - first_seq).unwrap();
    assert!(
        (Duration::from_millis(800)..Duration::from_millis(1300)).contains(&per_beat),
        "{per_beat:?} between heartbeats"
    );
    eprintln!("measured heartbeat interval: {per_beat:?}");

    // Clean stop (SIGTERM): exits 0 and hands the lease over at once.
    fleet.stop(first);
    let second = fleet.start();
    let hb = next_heartbeat(&fleet, &mut monitor).await;
    assert!(
        hb.seq > last.seq,
        "{} after {} (clean restart)",
        hb.seq,
        last.seq
    );
    last = hb;

    // Crash (SIGKILL): the next instance waits out the dead one's lease and
    // continues above the persisted high-water mark.
    fleet.kill(second);
    monitor.clear(HEARTBEAT);
    let killed = Instant::now();
    fleet.start();
    let hb = next_heartbeat(&fleet, &mut monitor).await;
    assert!(
        hb.seq > last.seq,
        "{} after {} (crash restart)",
        hb.seq,
        last.seq
    );
    assert!(
        killed.elapsed() < Duration::from_millis(3000 + 2000),
        "heartbeats resumed within a window (plus start-up): {:?}",
        killed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_watchdog_and_stopping() {
    let mut fleet = Fleet::new();
    let socket_path = fleet.dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let config = fleet.config();
    let index = fleet.start_with_env(
        &config,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            // Every 0.5 s; the unit file says 30 s.
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let mut seen = Vec::new();
    let receive = |seen: &mut Vec<String>, socket: &std::os::unix::net::UnixDatagram| {
        let mut buf = [0u8; 256];
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).trim().to_owned());
        }
    };
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        receive(&mut seen, &socket);
    }
    assert_eq!(
        seen.first().map(String::as_str),
        Some("READY=1"),
        "{seen:?}"
    );
    let feeds = seen.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(feeds >= 4, "{seen:?}");
    fleet.stop(index);
    seen.clear();
    for _ in 0..10 {
        receive(&mut seen, &socket);
    }
    assert!(seen.iter().any(|m| m == "STOPPING=1"), "{seen:?}");
}

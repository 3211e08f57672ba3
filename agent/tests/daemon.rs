#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]
//! The daemon as systemd and operators see it: its command line,
//! readiness and watchdog notifications, footprint, and the throughput of
//! the gate with group commit.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{DeviceLineage, Fleet, run};
use mctc_tests::{Proc, bin_path};

/// The command line lists its commands and flags. Bad or missing
/// configuration files (exit 2, one line `mctc-agent: config: …`, nothing
/// started) are the chaos row "config file with bad values, or none",
/// which owns that fault for all three binaries
/// (`xtask/src/chaos/owners.rs`).
#[test]
fn the_command_line_lists_its_commands() {
    let out = run("mctc-agent", &["--help"]);
    assert_eq!(out.code, 0);
    for command in [
        "run",
        "enroll",
        "identity",
        "status",
        "authorize",
        "lineage",
    ] {
        assert!(out.stdout.contains(command), "{command}: {}", out.stdout);
    }
    let out = run("mctc-agent", &["lineage", "export", "--help"]);
    assert!(out.stdout.contains("--out"), "{out:?}");
}

#[test]
fn systemd_hears_ready_and_watchdog_from_the_enforcement_loop() {
    let mut fleet = Fleet::new();
    fleet.start_authority();
    let device = fleet.device("notify-1", "locker");
    device.enroll();

    let notify_path = device.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut command = Command::new(bin_path("mctc-agent").unwrap());
    command
        .args(["run", "--config", device.config.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "1000000")
        .env("MCTC_LOG", "info");
    let mut agent = Proc::spawn_command("mctc-agent", command, &device.log_path()).unwrap();

    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let n = notify.recv(&mut buf).unwrap();
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        seen.push(message);
        let watchdogs = seen.iter().filter(|m| m.contains("WATCHDOG=1")).count();
        if seen.iter().any(|m| m.contains("READY=1")) && watchdogs >= 3 {
            break;
        }
    }
    assert!(seen.iter().any(|m| m.contains("READY=1")), "{seen:?}");
    // WATCHDOG_USEC 1 s: pings every half period while the loop runs.
    assert!(
        seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3,
        "{seen:?}"
    );
    agent.signal(rustix::process::Signal::TERM).unwrap();
    let mut stopping = false;
    while let Ok(n) = notify.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "no STOPPING=1");
    assert!(
        agent
            .wait_timeout(Duration::from_secs(20))
            .unwrap()
            .success()
    );
}

/// (VmRSS, RssAnon) in KiB: anonymous memory is what the agent itself
/// allocates; the rest is shared code (a debug binary is large).
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("RssAnon:"))
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The raw rate of write + fdatasync of one small record in `dir`.
fn fdatasync_rate(dir: &std::path::Path) -> f64 {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).unwrap();
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < Duration::from_secs(1) {
        file.write_all(&[0u8; 200]).unwrap();
        file.sync_data().unwrap();
        n += 1;
    }
    std::fs::remove_file(&path).unwrap();
    f64::from(n) / start.elapsed().as_secs_f64()
}

#[test]
fn the_gate_answers_concurrent_clients_with_shared_fdatasyncs_in_a_small_footprint() {
    let mut fleet = Fleet::new();
    fleet.start_authority();
    let mut device = fleet.device("bench-1", "locker");
    device.bring_up();
    let pid = device.pid();

    // Idle: no busy polling (drift checks every 250 ms, heartbeats). The
    // sleeps are the measurement: 1 s for the start-up work (first
    // checkpoint, status) to pass, then a 5 s window of CPU time.
    std::thread::sleep(Duration::from_secs(1));
    let (ticks0, t0) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let idle_cpu = (cpu_ticks(pid) - ticks0) as f64 / 100.0 / t0.elapsed().as_secs_f64();
    let idle_rss = rss_kib(pid);

    // One client: latency of a permit (socket, decision, fdatasync).
    let mut latencies = Vec::new();
    for i in 0..300 {
        let start = Instant::now();
        let answer = device.authorize("unlock", None, None, Some(&format!("l{i}")));
        latencies.push(start.elapsed());
        assert_eq!(answer["decision"], "permit");
    }
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];
    let single_rate = 300.0 / latencies.iter().sum::<Duration>().as_secs_f64();

    // 64 concurrent clients, each on its own connection.
    let before = device.status()["lineage"].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(Mutex::new(0u64));
    let threads: Vec<_> = (0..64)
        .map(|c| {
            let socket = device.socket.clone();
            let stop = Arc::clone(&stop);
            let count = Arc::clone(&count);
            std::thread::spawn(move || {
                use std::io::{BufRead, BufReader, Write};
                let stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                let mut line = String::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    writeln!(
                        writer,
                        r#"{{"authorize":{{"op":"unlock","ref":"c{c}-{i}"}}}}"#
                    )
                    .unwrap();
                    line.clear();
                    reader.read_line(&mut line).unwrap();
                    assert!(line.contains("\"permit\""), "{line}");
                    i += 1;
                }
                *count.lock().unwrap() += i;
            })
        })
        .collect();
    let start = Instant::now();
    // The load's duration (a measurement window, not synchronisation).
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let permits = *count.lock().unwrap();
    let rate = permits as f64 / elapsed;
    let rss = rss_kib(pid);
    let after = device.status()["lineage"].clone();
    let counter = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap();
    let records = counter(&after, "records") - counter(&before, "records");
    let syncs = counter(&after, "syncs") - counter(&before, "syncs");
    assert!(device.stop().success());
    assert!(
        device.lineage().len() as u64 >= records,
        "every permit on disk"
    );
    let raw = fdatasync_rate(device.dir.path());
    eprintln!(
        "gate bench: idle CPU {:.2} %, RSS idle {:?} KiB (total, anonymous), after 64 clients {:?} KiB; 1 client: p50 {:?}, p99 {:?}, {:.0} permits/s; \
         64 clients: {:.0} permits/s, {:.1} records per fdatasync; raw write+fdatasync {:.0}/s here: {:.1}x",
        idle_cpu * 100.0,
        idle_rss,
        rss,
        p50,
        p99,
        single_rate,
        rate,
        records as f64 / syncs as f64,
        raw,
        rate / raw
    );
    // No busy polling: a spinning loop would show tens of percent. The real
    // figure (target < 0.5 %, release build) is `cargo xtask bench`'s; this
    // debug build on a loaded CI machine only has to stay clear of a spin.
    assert!(idle_cpu < 0.10, "idle CPU {:.2} %", idle_cpu * 100.0);
    assert!(
        idle_rss.1 < 16 * 1024,
        "idle anonymous RSS {idle_rss:?} KiB"
    );
    // Group commit: many concurrent permits per fdatasync, so concurrency
    // multiplies throughput well beyond one client's.
    assert!(
        rate > 4.0 * single_rate,
        "64 clients {rate:.0}/s vs 1 client {single_rate:.0}/s"
    );
    assert!(
        records >= 8 * syncs,
        "{records} records in {syncs} fdatasyncs"
    );
}

//! One real device — swtpm and the release `mctc-agent` — in a real fleet
//! (Mosquitto with TLS and the shipped ACL, the release authority and
//! collector): footprint and idle CPU, the attestation round trip, and
//! durable permits from 64 concurrent clients on the gate socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use mctc_tests::fleet::{Device, Fleet, PATIENCE, authorize_request, gate_request};
use mctc_tests::{Proc, bin_path, wait_until};
use serde_json::json;

use crate::limits;
use crate::report::Figures;
use crate::stats::Samples;

/// Clients on the gate socket (the figure; also the agent's
/// default `max_connections`).
pub const CLIENTS: usize = 64;
/// One fresh-attestation operation per this period at most.
const ROUNDTRIP_PERIOD: Duration = Duration::from_millis(20);

/// How long each part runs.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub idle: Duration,
    pub roundtrips: usize,
    pub fsync: Duration,
    pub permits: Duration,
}

/// Starts the agent as a production unit would (`MCTC_LOG=info`, not the
/// harness's debug level) and waits for its socket.
pub fn start_agent(device: &mut Device) -> Result<(), String> {
    let binary = bin_path("mctc-agent").map_err(|e| e.to_string())?;
    let mut command = Command::new(binary);
    command
        .arg("run")
        .arg("--config")
        .arg(&device.config)
        .env("MCTC_LOG", "info");
    let log = device.log_path();
    device.agent =
        Some(Proc::spawn_command("mctc-agent", command, &log).map_err(|e| e.to_string())?);
    wait_until(PATIENCE, || {
        device.request(&json!({"status": {}})).is_some()
    })
    .ok_or_else(|| format!("agent socket did not come up:\n{}", device.log()))?;
    Ok(())
}

/// Replaces `from` by `to` in the device's configuration.
pub fn edit_config(device: &Device, from: &str, to: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(&device.config).map_err(|e| e.to_string())?;
    if !text.contains(from) {
        return Err(format!("agent config has no `{from}`"));
    }
    std::fs::write(&device.config, text.replacen(from, to, 1)).map_err(|e| e.to_string())
}

/// A device enrolled, started and open.
pub fn bring_up(fleet: &Fleet, id: &str, class: &str) -> Result<Device, String> {
    let mut device = fleet.device(id, class);
    // The shipped default: status every 30 s (the harness publishes every
    // 2 s so its tests see changes quickly).
    edit_config(&device, "interval_ms = 2000", "interval_ms = 30000")?;
    device.enroll();
    start_agent(&mut device)?;
    device
        .wait_state("open", PATIENCE)
        .ok_or_else(|| format!("gate did not open: {}", device.status()))?;
    Ok(device)
}

fn proc_field(pid: u32, file: &str) -> Result<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .map_err(|e| format!("/proc/{pid}/{file}: {e}"))
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = proc_field(pid, "stat")?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).ok_or("bad stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 here.
    let tick = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("stat field {i}"))
    };
    Ok(tick(11)? + tick(12)?)
}

fn clock_ticks_per_second() -> Result<f64, String> {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .map_err(|e| format!("getconf: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("CLK_TCK: {e}"))
}

/// A `/proc/PID/status` size field in MB (10^6 bytes).
fn status_mb(pid: u32, field: &str) -> Result<f64, String> {
    let status = proc_field(pid, "status")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| {
            v.trim_start_matches(':')
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .ok_or_else(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(kb * 1024.0 / 1e6)
}

/// Resident set size in MB (10^6 bytes).
pub fn rss_mb(pid: u32) -> Result<f64, String> {
    status_mb(pid, "VmRSS")
}

/// "anonymous a MB, file-backed f MB (largest: …)" (what the RSS is made of).
fn rss_parts(pid: u32) -> String {
    match (status_mb(pid, "RssAnon"), status_mb(pid, "RssFile")) {
        (Ok(anon), Ok(file)) => format!(
            "anonymous {anon:.1} MB, file-backed {file:.1} MB (largest: {})",
            largest_files(pid, 4)
        ),
        _ => String::new(),
    }
}

/// The `n` files with the most resident pages in the process, from
/// /proc/PID/smaps: "libcrypto.so.3 3.1 MB, …".
fn largest_files(pid: u32, n: usize) -> String {
    let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return "smaps unreadable".to_owned();
    };
    let mut by_file: Vec<(String, u64)> = Vec::new();
    let mut current: Option<String> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // A mapping header: range perms offset dev inode [path].
            current = fields
                .nth(4)
                .filter(|path| path.starts_with('/'))
                .map(|path| path.rsplit('/').next().unwrap_or(path).to_owned());
        } else if first == "Rss:"
            && let Some(file) = &current
        {
            let kb: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            match by_file.iter_mut().find(|(name, _)| name == file) {
                Some((_, total)) => *total += kb,
                None => by_file.push((file.clone(), kb)),
            }
        }
    }
    by_file.sort_by_key(|b| std::cmp::Reverse(b.1));
    by_file
        .iter()
        .take(n)
        .map(|(name, kb)| format!("{name} {:.1} MB", *kb as f64 * 1024.0 / 1e6))
        .collect::<Vec<_>>()
        .join(", ")
}

fn heartbeat_seq(device: &Device) -> Option<u64> {
    device.status()["heartbeat_seq"].as_u64()
}

/// Footprint and idle CPU: the agent left alone, gate open, heartbeats
/// and drift checks running.
fn idle(figures: &mut Figures, device: &Device, window: Duration) -> Result<(), String> {
    let pid = device.pid();
    let binary = bin_path("mctc-agent").map_err(|e| e.to_string())?;
    let size = std::fs::metadata(&binary).map_err(|e| e.to_string())?.len();
    figures.set("agent_binary_mb", size as f64 / 1e6);
    figures.note(
        "agent_binary_mb",
        "target/release/mctc-agent: LTO, codegen-units 1, panic=abort, symbols stripped (the release profile)",
    );
    // Let start-up work (first checkpoint, lineage forwarding) settle.
    std::thread::sleep(Duration::from_secs(3));
    let hz = clock_ticks_per_second()?;
    let hb_before = heartbeat_seq(device);
    let t0 = cpu_ticks(pid)?;
    let start = Instant::now();
    std::thread::sleep(window);
    let t1 = cpu_ticks(pid)?;
    let took = start.elapsed().as_secs_f64();
    let hb_after = heartbeat_seq(device);
    if hb_after <= hb_before {
        return Err(format!(
            "no heartbeat arrived during the idle window ({hb_before:?} → {hb_after:?})"
        ));
    }
    let cpu = (t1 - t0) as f64 / hz / took * 100.0;
    figures.set("agent_idle_cpu_pct", cpu);
    figures.note(
        "agent_idle_cpu_pct",
        format!(
            "{:.0} s idle, gate open, {} heartbeats (15 s window, one every 5 s), drift check every 250 ms; /proc utime+stime at {hz} Hz",
            took,
            hb_after.unwrap_or(0) - hb_before.unwrap_or(0)
        ),
    );
    figures.set("agent_rss_mb", rss_mb(pid)?);
    figures.note(
        "agent_rss_mb",
        format!("VmRSS at the end of the idle window: {}", rss_parts(pid)),
    );
    if device.state() != "open" {
        return Err(format!(
            "gate closed during the idle window: {}",
            device.status()
        ));
    }
    Ok(())
}

/// Fresh-attestation operations one after another: each is nonce request
/// → TPM quote → evidence → authority verify (+ its database
/// transaction) → artifact verified and installed → the permit's record
/// durable → answer.
fn roundtrips(figures: &mut Figures, device: &Device, count: usize) -> Result<(), String> {
    let request = authorize_request("inspect", None, None, None);
    let mut samples = Samples::new();
    let mut next = Instant::now();
    for _ in 0..count {
        // Paced under the harness authority's per-device limit (burst 50,
        // 100 nonce requests a second): a device asking faster is
        // throttled, which is not what is measured here.
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next = Instant::now() + ROUNDTRIP_PERIOD;
        let start = Instant::now();
        let answer = gate_request(&device.socket, &request, Duration::from_secs(30))
            .ok_or("no answer from the gate")?;
        let took = start.elapsed();
        if answer["decision"] != "permit" {
            return Err(format!("fresh operation denied: {answer}"));
        }
        samples.push(took);
    }
    let p50 = samples.p50().ok_or("no samples")?;
    figures.set("attest_roundtrip_ms_p50", p50);
    figures.note(
        "attest_roundtrip_ms_p50",
        format!(
            "fresh-attestation operations through the gate socket, one at a time: {}; includes the nonce round trip, the agent's PCR read + quote, two authority SQLite transactions and the permit's fdatasync",
            samples.summary()
        ),
    );
    Ok(())
}

fn fsync(figures: &mut Figures, dir: &Path, duration: Duration) -> Result<(), String> {
    let (rate, latencies) = limits::fdatasync_rate(dir, duration)?;
    figures.set("fsync_per_s", rate);
    figures.set("fdatasync_ms_p50", latencies.p50().ok_or("no samples")?);
    figures.note(
        "fsync_per_s",
        format!(
            "200-byte append + fdatasync in the agent's state directory: {}",
            latencies.summary()
        ),
    );
    Ok(())
}

struct ClientResult {
    /// (sent, latency, permitted)
    answers: Vec<(Instant, Duration, bool)>,
    error: Option<String>,
}

fn client(socket: &Path, stop: &AtomicBool, barrier: &Barrier) -> ClientResult {
    let mut result = ClientResult {
        answers: Vec::with_capacity(1 << 16),
        error: None,
    };
    let stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            result.error = Some(format!("connect: {e}"));
            barrier.wait();
            return result;
        }
    };
    barrier.wait();
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            result.error = Some(format!("clone: {e}"));
            return result;
        }
    };
    let mut reader = BufReader::new(stream);
    let request = format!("{}\n", authorize_request("unlock", None, None, None));
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        if let Err(e) = writer.write_all(request.as_bytes()) {
            result.error = Some(format!("write: {e}"));
            break;
        }
        line.clear();
        match reader.read_line(&mut line) {
            Ok(n) if n > 0 => {}
            Ok(_) => {
                result.error = Some("the agent closed the connection".into());
                break;
            }
            Err(e) => {
                result.error = Some(format!("read: {e}"));
                break;
            }
        }
        let permit = line.contains("\"decision\":\"permit\"");
        if !permit && !line.contains("\"decision\"") {
            result.error = Some(format!("unexpected answer: {}", line.trim_end()));
            break;
        }
        result.answers.push((sent, sent.elapsed(), permit));
    }
    result
}

/// 64 clients, each on its own connection, asking `unlock` as fast as
/// answers come, for a warm-up second and then `window`.
fn permits(figures: &mut Figures, device: &Device, window: Duration) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(CLIENTS + 1));
    let mut threads = Vec::new();
    for _ in 0..CLIENTS {
        let socket = device.socket.clone();
        let stop = Arc::clone(&stop);
        let barrier = Arc::clone(&barrier);
        threads.push(std::thread::spawn(move || client(&socket, &stop, &barrier)));
    }
    barrier.wait();
    let from = Instant::now() + Duration::from_secs(1);
    let until = from + window;
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Samples::new();
    let (mut permitted, mut denied) = (0u64, 0u64);
    for thread in threads {
        let result = thread.join().map_err(|_| "client thread panicked")?;
        if let Some(error) = result.error {
            return Err(format!("gate client: {error}"));
        }
        for (sent, latency, permit) in result.answers {
            if sent < from || sent + latency > until {
                continue;
            }
            latencies.push(latency);
            if permit {
                permitted += 1;
            } else {
                denied += 1;
            }
        }
    }
    if denied > 0 {
        return Err(format!("{denied} of the burst's requests were denied"));
    }
    let rate = permitted as f64 / window.as_secs_f64();
    figures.set("durable_permits_per_s", rate);
    figures.set(
        "permit_latency_ms_p50",
        latencies.p50().ok_or("no permits")?,
    );
    figures.set(
        "permit_latency_ms_p99",
        latencies.p99().ok_or("no permits")?,
    );
    let status = device.status();
    figures.note(
        "durable_permits_per_s",
        format!(
            "{CLIENTS} clients, {permitted} permits in {:.0} s, each answered after its record's fdatasync; lineage now {}",
            window.as_secs_f64(),
            status["lineage"]
        ),
    );
    figures.note("permit_latency_ms_p99", latencies.summary());
    Ok(())
}

/// The whole section.
pub fn measure(figures: &mut Figures, plan: Plan) -> Result<(), String> {
    let policy = crate::authority::bench_class("bench", 60_000, 15_000);
    let mut fleet = Fleet::with_policy(&policy);
    fleet.start_authority();
    fleet.start_collector();
    let device = bring_up(&fleet, "bench-0", "bench")?;
    idle(figures, &device, plan.idle)?;
    roundtrips(figures, &device, plan.roundtrips)?;
    fsync(figures, &device.state_dir(), plan.fsync)?;
    permits(figures, &device, plan.permits)?;
    figures.set("agent_rss_after_burst_mb", rss_mb(device.pid())?);
    figures.note(
        "agent_rss_after_burst_mb",
        format!(
            "VmRSS after the 64-client burst: {}",
            rss_parts(device.pid())
        ),
    );
    Ok(())
}

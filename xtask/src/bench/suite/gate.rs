//! `gate_close_after_deadline_ms_p99`: how long after its deadline a
//! device's gate is seen closed, from outside, by the device's software
//! (the gate socket) and by a monitor (the retained status topic).
//!
//! Two real devices in a class with 1 s artifacts (and a 3 s heartbeat
//! window). Each cycle: let the authority answer until both gates are
//! open, stop it (SIGSTOP: connected, but no renewals and no heartbeats),
//! predict each device's deadline — the earlier of the artifact's
//! (`expires_in_ms` of its status) and the heartbeat window's (the last
//! heartbeat the monitor saw + 3 s) — then probe `unlock` on the socket
//! from just before it until the first deny, and take the first `closed`
//! status the monitor receives. Both are "observed closed" times; the
//! figure is the p99 of (observed − deadline) over both probes and every
//! cycle.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use mctc_shim::DeviceId;
use mctc_shim::topics::{DeviceTopic, HEARTBEAT};
use mctc_tests::fleet::{Device, Fleet, MqttClient, authorize_request};

use crate::device::bring_up;
use crate::report::Figures;
use crate::stats::Samples;

/// The artifacts' ttl.
const WINDOW_MS: u64 = 1_000;
/// The heartbeat window: longer than the artifacts' ttl and counted from
/// each artifact's receipt as well as each heartbeat's, so it never lapses
/// before the artifact, whose deadline the device reports to the
/// millisecond (`expires_in_ms`). (A heartbeat deadline is decided by the
/// same gate code, but only the device knows when it received its last
/// heartbeat, so it cannot be predicted from outside to a millisecond.)
const HEARTBEAT_WINDOW_MS: u64 = 3_000;
/// Probing starts this long before the predicted deadline.
const LEAD: Duration = Duration::from_millis(15);

struct Prediction {
    deadline: Instant,
    by: &'static str,
}

/// The device's deadline as seen from outside, right after the authority
/// was stopped at `stopped`.
fn predict(device: &Device, monitor: &MqttClient, stopped: Instant) -> Result<Prediction, String> {
    let before = Instant::now();
    let status = device.status();
    let after = Instant::now();
    let expires_in = status["artifact"]["expires_in_ms"]
        .as_u64()
        .ok_or_else(|| format!("no artifact in the status: {status}"))?;
    let asked = before + (after - before) / 2;
    let artifact = asked + Duration::from_millis(expires_in);
    // The heartbeat window runs from the later of the last heartbeat and
    // the artifact's receipt (the gate's rule), so with artifacts shorter
    // than the window it cannot end first; it is still checked, as the gate
    // would.
    let received = artifact
        .checked_sub(Duration::from_millis(WINDOW_MS))
        .unwrap_or(artifact);
    // A heartbeat published just before the stop may still be on its way.
    std::thread::sleep(Duration::from_millis(20));
    let heartbeat = monitor
        .last_before(HEARTBEAT, stopped + Duration::from_millis(20))
        .map(|at| at.max(received) + Duration::from_millis(HEARTBEAT_WINDOW_MS));
    Ok(match heartbeat {
        Some(hb) if hb < artifact => Prediction {
            deadline: hb,
            by: "heartbeat",
        },
        _ => Prediction {
            deadline: artifact,
            by: "artifact",
        },
    })
}

/// Asks `unlock` from `LEAD` before `deadline` until the first deny;
/// returns when that deny arrived.
fn probe(device: &Device, deadline: Instant) -> Result<Instant, String> {
    std::thread::sleep(deadline.saturating_duration_since(Instant::now() + LEAD));
    let stream = UnixStream::connect(&device.socket).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let request = format!("{}\n", authorize_request("unlock", None, None, None));
    let give_up = deadline + Duration::from_secs(3);
    let mut line = String::new();
    while Instant::now() < give_up {
        writer
            .write_all(request.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        line.clear();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        let answered = Instant::now();
        if line.contains("\"decision\":\"deny\"") {
            return Ok(answered);
        }
        if !line.contains("\"decision\":\"permit\"") {
            return Err(format!("unexpected answer: {}", line.trim_end()));
        }
    }
    Err("the gate stayed open 3 s past its deadline".into())
}

/// The first status with a state other than `open` received after `since`.
fn status_closed(monitor: &MqttClient, topic: &str, since: Instant) -> Option<Instant> {
    monitor
        .since(topic, since)
        .into_iter()
        .find_map(|(at, payload)| {
            let status: serde_json::Value = serde_json::from_slice(&payload).ok()?;
            (status["state"] != "open").then_some(at)
        })
}

fn wait_open(devices: &[Device]) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if devices.iter().all(|d| d.state() == "open") {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err("the gates did not reopen within 30 s".into())
}

fn ms_after(observed: Instant, deadline: Instant) -> f64 {
    if observed >= deadline {
        (observed - deadline).as_secs_f64() * 1000.0
    } else {
        -(deadline - observed).as_secs_f64() * 1000.0
    }
}

pub fn measure(figures: &mut Figures, cycles: usize) -> Result<(), String> {
    let policy = mctc_tests::fleet::class(
        "lapse",
        WINDOW_MS,
        HEARTBEAT_WINDOW_MS,
        &["op = \"unlock\"\nfresh_attestation = false"],
    );
    let mut fleet = Fleet::with_policy(&policy);
    fleet.start_authority();
    let devices = [
        bring_up(&fleet, "lapse-0", "lapse")?,
        bring_up(&fleet, "lapse-1", "lapse")?,
    ];
    let topics: Vec<String> = devices
        .iter()
        .map(|d| {
            DeviceId::new(&d.id)
                .map(|id| DeviceTopic::Status.topic(&id).to_string())
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    let filters: Vec<&str> = topics
        .iter()
        .map(String::as_str)
        .chain([HEARTBEAT])
        .collect();
    let monitor =
        MqttClient::try_connect(&fleet.broker, "mctc-monitor", "bench-monitor", &filters)?;
    let (mut socket, mut status) = (Samples::new(), Samples::new());
    let (mut by_artifact, mut by_heartbeat) = (0, 0);
    let result = (|| {
        for _ in 0..cycles {
            wait_open(&devices)?;
            fleet.silence_authority();
            let stopped = Instant::now();
            let predictions = devices
                .iter()
                .map(|d| predict(d, &monitor, stopped))
                .collect::<Result<Vec<_>, _>>()?;
            let observed = std::thread::scope(|s| {
                let handles: Vec<_> = devices
                    .iter()
                    .zip(&predictions)
                    .map(|(d, p)| s.spawn(move || probe(d, p.deadline)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err("probe panicked".into())))
                    .collect::<Result<Vec<_>, String>>()
            })?;
            // The status goes out when the agent's timer fires; give it
            // time to arrive before looking.
            std::thread::sleep(Duration::from_millis(50));
            for ((prediction, seen), topic) in predictions.iter().zip(&observed).zip(&topics) {
                let by_socket = ms_after(*seen, prediction.deadline);
                let published = status_closed(&monitor, topic, stopped)
                    .ok_or_else(|| format!("no closed status on {topic}"))?;
                let by_status = ms_after(published, prediction.deadline);
                if std::env::var_os("MCTC_BENCH_VERBOSE").is_some() {
                    println!(
                        "    {topic}: {} deadline, socket {by_socket:+.2} ms, status {by_status:+.2} ms",
                        prediction.by
                    );
                }
                socket.push_ms(by_socket);
                status.push_ms(by_status);
                match prediction.by {
                    "heartbeat" => by_heartbeat += 1,
                    _ => by_artifact += 1,
                }
            }
            fleet.resume_authority();
        }
        Ok::<(), String>(())
    })();
    // Never leave the authority stopped (its Proc is killed on drop anyway).
    fleet.resume_authority();
    result?;
    let mut all = Samples::new();
    all.extend(&socket);
    all.extend(&status);
    figures.set(
        "gate_close_after_deadline_ms_p99",
        all.p99().ok_or("no samples")?,
    );
    figures.note(
        "gate_close_after_deadline_ms_p99",
        format!(
            "{cycles} lapses × 2 devices ({by_artifact} artifact, {by_heartbeat} heartbeat deadlines); socket deny {}; status topic {}",
            socket.summary(),
            status.summary()
        ),
    );
    Ok(())
}

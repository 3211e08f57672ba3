//! Bad input from outside: garbage and oversized payloads on every topic,
//! a flood of gate-socket clients, configuration files with bad values.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mctc_shim::artifact::Claims;
use mctc_shim::{AuthorityKey, RingCrypto, Signed, Signer};
use mctc_tests::bin_path;
use mctc_tests::fleet::MqttClient;

use super::{Outcome, recover_and_account, sleep_ms, watch};
use crate::chaos::broken::{Broken, Context};
use crate::chaos::probe::{self, Answer, Probe};
use crate::chaos::rig::{Rig, SLACK, TTL_MS, ms};

fn genuine_ctis(rig: &Rig, signer: &dyn Signer) -> BTreeSet<String> {
    let keys = [AuthorityKey::new(&RingCrypto, signer.public_key())];
    rig.main
        .artifacts_seen()
        .iter()
        .filter_map(|a| Claims::open(a, &keys, &RingCrypto).ok())
        .map(|c| hex::encode(c.cti.0))
        .collect()
}

/// Payloads no component may choke on.
fn junk() -> Vec<Vec<u8>> {
    vec![
        Vec::new(),
        b"garbage".to_vec(),
        vec![0xff; 3000],
        // A COSE_Sign1 tag and array with empty parts.
        vec![0xd2, 0x84, 0x40, 0xa0, 0x40, 0x40],
        // A map that ends early.
        vec![0xa3, 0x00, 0x01, 0x01],
        // A byte string claiming 4 GiB.
        vec![0x5a, 0xff, 0xff, 0xff, 0xff, 0x00],
        // Deep nesting.
        vec![0x81; 5000],
        br#"{"authorize":{"op":"unlock"}}"#.to_vec(),
        // Oversized: above every mctc limit and below the broker's packet
        // limit (128 KiB), so it is delivered and dropped by the receiver;
        // then one the broker refuses (it disconnects the sender).
        vec![0x00; 100 * 1024],
        vec![0xa5; 1000 * 1024],
    ]
}

fn alive(rig: &mut Rig) -> Vec<String> {
    let mut dead = Vec::new();
    if !rig.main.device.alive() {
        dead.push("agent".to_owned());
    }
    for (name, proc) in [
        ("authority", rig.fleet.authority.as_mut()),
        ("collector", rig.fleet.collector.as_mut()),
    ] {
        if proc.is_none_or(|p| p.try_status().is_some()) {
            dead.push(name.to_owned());
        }
    }
    if !rig.fleet.broker.is_running() {
        dead.push("broker".to_owned());
    }
    dead
}

/// What the agent logs when it drops junk, one line per kind of topic it
/// subscribes to.
const REJECTED: [&str; 5] = [
    "heartbeat rejected",
    "control message rejected",
    "nonce message dropped",
    "lineage ack dropped",
    "artifact-topic message",
];

/// Garbage and oversized payloads on every topic of the system, each from
/// an identity the broker's ACL lets publish there; the agent logs each
/// kind it subscribes to as rejected.
pub fn garbage_everywhere(rig: &mut Rig, signer: &dyn Signer) -> Result<Outcome, Broken> {
    let mut out = Outcome::default();
    let id = rig.main.id().to_owned();
    let device = MqttClient::connect(&rig.fleet.broker, &id, "chaos-junk-device", &[]);
    let authority = MqttClient::connect(
        &rig.fleet.broker,
        "mctc-authority",
        "chaos-junk-authority",
        &[],
    );
    let collector = MqttClient::connect(
        &rig.fleet.broker,
        "mctc-collector",
        "chaos-junk-collector",
        &[],
    );
    let dev = |leaf: &str| format!("mctc/v1/dev/{id}/{leaf}");
    let enroll = |leaf: &str| format!("mctc/v1/enroll/{id}/{leaf}");
    let targets: Vec<(&MqttClient, String)> = vec![
        // To the agent.
        (&authority, dev("nonce")),
        (&authority, dev("artifact")),
        (&authority, dev("control")),
        (&authority, "mctc/v1/fleet/heartbeat".to_owned()),
        (&authority, format!("mctc/v1/registry/{id}")),
        (&authority, enroll("challenge")),
        (&authority, enroll("result")),
        (&collector, dev("lineage/ack")),
        // To the authority.
        (&device, dev("nonce/req")),
        (&device, dev("evidence")),
        (&device, enroll("request")),
        (&device, enroll("proof")),
        // To the collector and monitors.
        (&device, dev("lineage")),
        (&device, dev("status")),
        (&collector, "mctc/v1/collector/alerts".to_owned()),
    ];
    let probe = watch(&rig.main, "junk");
    let mark = super::log_mark(&rig.main);
    let cti_before = rig.main.status()["artifact"]["cti"].clone();
    let start = Instant::now();
    let mut published = 0;
    for payload in junk() {
        for (client, topic) in &targets {
            client.publish(topic, &payload, false);
            published += 1;
        }
    }
    // Until the device renewed after the junk: the authority served through
    // it (and the junk, published first, has been delivered).
    let _ = mctc_tests::wait_until(Duration::from_millis(TTL_MS) + SLACK, || {
        rig.main.status()["artifact"]["cti"] != cti_before
    });
    // Each kind the agent subscribes to was handled: rejected in its log.
    let handled = mctc_tests::wait_until(Duration::from_secs(10), || {
        let log = rig.main.device.log();
        let new = log.get(mark..).unwrap_or("");
        REJECTED.iter().all(|needle| new.contains(needle))
    });
    let log = rig.main.device.log();
    let unhandled: Vec<&str> = REJECTED
        .iter()
        .copied()
        .filter(|needle| !log.get(mark..).unwrap_or("").contains(needle))
        .collect();
    let dead = alive(rig);
    let status = rig.main.status();
    let back = Instant::now();
    let seen = probe.observations();
    let genuine = genuine_ctis(rig, signer);
    let foreign: BTreeSet<String> = probe::permits(&seen)
        .into_iter()
        .map(|p| p.cti)
        .filter(|cti| !genuine.contains(cti))
        .collect();
    let denies = seen
        .iter()
        .filter(|o| o.sent >= start && !o.is_permit())
        .count();
    out.require(dead.is_empty(), || format!("died: {}", dead.join(", ")));
    out.require(handled.is_some(), || {
        format!("the agent never logged the junk as rejected: {unhandled:?}")
    });
    out.require(foreign.is_empty(), || {
        format!("permits under unknown artifacts {foreign:?}")
    });
    out.require(status["state"] == "open", || {
        format!("gate not open after the junk: {status}")
    });
    out.require(status["artifact"]["cti"] != cti_before, || {
        "no renewal after the junk: is the authority serving?".into()
    });
    out.require(denies == 0, || {
        format!("{denies} denies while only junk arrived")
    });
    out.observed = format!(
        "{published} junk messages on {} topics (up to 1000 KiB); all rejected by kind; all processes up, gate open, renewed",
        targets.len()
    );
    recover_and_account(&mut out, rig, &rig.main, probe, back);
    Ok(out)
}

/// Whether `line` is the gate socket's busy answer (`{"error":"busy",…}`,
/// read as JSON: the typed API added a version field after the error).
fn told_busy(line: &[u8]) -> bool {
    let line = line.split(|b| *b == b'\n').next().unwrap_or_default();
    serde_json::from_slice::<serde_json::Value>(line).is_ok_and(|v| v["error"] == "busy")
}

/// Holds a gate-socket connection open without asking anything.
fn idle(socket: &Path) -> Option<UnixStream> {
    UnixStream::connect(socket).ok()
}

/// Many clients at once: fast askers, idle connections beyond the
/// connection limit, overlong lines, half-written lines.
pub fn socket_flood(rig: &mut Rig) -> Result<Outcome, Broken> {
    let mut out = Outcome::default();
    let socket = rig.main.device.socket.clone();
    let probe = watch(&rig.main, "flood");
    let start = Instant::now();
    let askers: Vec<Probe> = (0..24)
        .map(|i| Probe::start(&socket, &format!("flood-{i}")))
        .collect();
    out.require(super::all_permitting(&askers, SLACK), || {
        "the askers were not served before the flood".into()
    });
    // Idle connections past the limit (64): the extra ones are told busy.
    let mut busy = 0;
    let mut idlers = Vec::new();
    for _ in 0..200 {
        if let Some(mut conn) = idle(&socket) {
            let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buf = [0u8; 64];
            if let Ok(n) = conn.read(&mut buf)
                && n > 0
                && buf.get(..n).is_some_and(told_busy)
            {
                busy += 1;
            } else {
                idlers.push(conn);
            }
        }
    }
    // Overlong and half-written lines from fresh connections.
    let mut overlong_closed = 0;
    for _ in 0..10 {
        if let Some(mut conn) = idle(&socket) {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = conn.write_all(&vec![b'x'; 64 * 1024]);
            let mut answer = String::new();
            if BufReader::new(&conn).read_line(&mut answer).is_ok() && answer.contains("error") {
                overlong_closed += 1;
            }
        }
    }
    for _ in 0..10 {
        if let Some(mut conn) = idle(&socket) {
            let _ = conn.write_all(b"{\"authorize\":{\"op\":\"unl");
            idlers.push(conn);
        }
    }
    // The fault holds: idle and half-written connections stay open while
    // the askers go on.
    sleep_ms(2_000);
    drop(idlers);
    let mut flood = Vec::new();
    for asker in askers {
        flood.extend(asker.stop());
    }
    let back = Instant::now();
    let alive = rig.main.device.alive();
    let seen = probe.observations();
    let during: Vec<&probe::Observation> = seen
        .iter()
        .filter(|o| o.sent >= start && o.sent < back)
        .collect();
    let probe_permits = during.iter().filter(|o| o.is_permit()).count();
    let mut latencies: Vec<u64> = during
        .iter()
        .map(|o| ms(o.answered.saturating_duration_since(o.sent)))
        .collect();
    latencies.sort_unstable();
    let p99 = latencies
        .get(latencies.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or(0);
    let flood_permits = probe::permits(&flood);
    let errors = flood
        .iter()
        .filter(|o| matches!(&o.answer, Answer::Unreachable { detail } if !detail.contains("busy")))
        .count();
    out.require(alive, || "the agent died".into());
    out.require(busy > 0, || {
        "no connection was refused as busy beyond the limit".into()
    });
    out.require(overlong_closed == 10, || {
        format!("{overlong_closed}/10 overlong lines answered with an error")
    });
    out.require(probe_permits > 0, || {
        "the probe got no permit during the flood".into()
    });
    out.require(errors == 0, || {
        format!("{errors} flood requests failed other than busy")
    });
    out.observed = format!(
        "24 askers ({} permits), {busy} of 200 idle connections told busy, 10 overlong lines refused; probe p99 {p99} ms",
        flood_permits.len()
    );
    recover_and_account(&mut out, rig, &rig.main, probe, back);
    out.accounted(&rig.account_permits(&rig.main, &flood_permits));
    Ok(out)
}

/// Runs `binary run --config FILE`; returns (exit code, stderr) or an
/// error if it was still running after 10 s (it started).
fn run_config(binary: &str, config: &Path) -> Result<(i32, String), String> {
    let mut child = Command::new(bin_path(binary).map_err(|e| e.to_string())?)
        .args(["run", "--config"])
        .arg(config)
        .env("MCTC_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start {binary}: {e}"))?;
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            return Ok((status.code().unwrap_or(-1), stderr));
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{binary} started with {}", config.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Replaces the first line starting with `key =` (in the whole file) by
/// `line`, or prepends `line` when no such key exists.
fn with_line(text: &str, key: &str, line: &str) -> String {
    let mut done = false;
    let mut out: Vec<String> = text
        .lines()
        .map(|l| {
            if !done && l.trim_start().starts_with(&format!("{key} =")) {
                done = true;
                line.to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect();
    if !done {
        out.insert(0, line.to_owned());
    }
    out.join("\n") + "\n"
}

/// Configuration files with one bad value each, or none at all: every
/// binary refuses to start, with one line (`<binary>: …`, the agent's
/// `mctc-agent: config: …` for a bad value) naming the problem and exit
/// code 2.
pub fn bad_configs(rig: &mut Rig) -> Result<Outcome, Broken> {
    let mut out = Outcome::default();
    let dir = tempfile::Builder::new()
        .prefix("mctc-chaos-config-")
        .tempdir()
        .context("temporary directory")?;
    let read = |p: &Path| std::fs::read_to_string(p).context(&p.display().to_string());
    // Each base config points its files at this directory, so that a
    // config wrongly accepted could not touch the running fleet.
    let agent = with_line(
        &with_line(
            &read(&rig.main.device.config)?,
            "state_dir",
            &format!("state_dir = \"{}\"", dir.path().join("state").display()),
        ),
        "socket",
        &format!("socket = \"{}\"", dir.path().join("gate.sock").display()),
    );
    let agent = with_line(&agent, "device_id", "device_id = \"chaos-config\"");
    let authority = with_line(
        &read(Path::new(&rig.fleet.config()))?,
        "database",
        &format!("database = \"{}\"", dir.path().join("a.db").display()),
    );
    let collector = with_line(
        &read(Path::new(&rig.fleet.collector_config()))?,
        "path",
        &format!("path = \"{}\"", dir.path().join("c.db").display()),
    );
    let policy_file = rig.fleet.dir.path().join("policy.toml");
    let bad_policy = dir.path().join("policy.toml");
    std::fs::write(
        &bad_policy,
        read(&policy_file)?.replace("artifact_ttl_ms = 4000", "artifact_ttl_ms = 0"),
    )
    .context("write the bad policy")?;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "mctc-agent",
            with_line(&agent, "drift_interval_ms", "drift_interval_ms = 0"),
            "drift_interval_ms",
        ),
        (
            "mctc-agent",
            with_line(&agent, "device_id", "device_id = \"Bad Id!\""),
            "device_id",
        ),
        (
            "mctc-agent",
            with_line(&agent, "pcrs", "pcrs = [0, 7, 99]"),
            "99",
        ),
        (
            "mctc-agent",
            with_line(&agent, "url", "url = \"mqtt://127.0.0.1:1883\""),
            "url",
        ),
        (
            "mctc-agent",
            with_line(&agent, "max_connections", "max_connections = 0"),
            "max_connections",
        ),
        (
            "mctc-agent",
            with_line(&agent, "quota_bytes", "quota_bytes = 100"),
            "quota_bytes",
        ),
        (
            "mctc-agent",
            with_line(&agent, "colour", "colour = \"red\""),
            "colour",
        ),
        (
            "mctc-agent",
            with_line(
                &agent,
                "public_keys",
                "public_keys = [\"/nonexistent/authority.pub\"]",
            ),
            "/nonexistent/authority.pub",
        ),
        ("mctc-agent", "device_id = [\n".to_owned(), "line 1"),
        ("mctc-agent", "this is not toml\n".to_owned(), "line 1"),
        (
            "mctc-agent",
            format!(
                "device_id = \"d1\"\nstate_dir = \"{}\"\n",
                dir.path().display()
            ),
            "missing",
        ),
        (
            "mctc-authority",
            with_line(&authority, "authority_id", "authority_id = \"\""),
            "authority_id",
        ),
        (
            "mctc-authority",
            with_line(
                &authority,
                "signing_key",
                "signing_key = \"/nonexistent/authority.key\"",
            ),
            "/nonexistent/authority.key",
        ),
        (
            "mctc-authority",
            with_line(
                &authority,
                "policy",
                &format!("policy = \"{}\"", bad_policy.display()),
            ),
            "artifact_ttl_ms",
        ),
        (
            "mctc-authority",
            with_line(&authority, "keep_alive_secs", "keep_alive_secs = -5"),
            "-5",
        ),
        (
            "mctc-collector",
            with_line(&collector, "gap_grace_ms", "gap_grace_ms = \"soon\""),
            "gap_grace_ms",
        ),
        (
            "mctc-collector",
            with_line(&collector, "url", "url = \"tcp://127.0.0.1:1\""),
            "url",
        ),
        (
            "mctc-collector",
            with_line(&collector, "backend", "backend = \"postgres\""),
            "backend",
        ),
        (
            "mctc-collector",
            with_line(&collector, "public_keys", "public_keys = []"),
            "public_keys",
        ),
    ];
    let mut files = Vec::new();
    for (i, (binary, text, names)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&file, text).context("write a bad config")?;
        files.push((*binary, file, *names));
    }
    // And no file at all.
    for binary in ["mctc-agent", "mctc-authority", "mctc-collector"] {
        files.push((binary, dir.path().join("missing.toml"), "missing.toml"));
    }
    let mut refused = 0;
    for (i, (binary, file, names)) in files.iter().enumerate() {
        match run_config(binary, file) {
            Ok((code, stderr)) => {
                let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
                // One line, prefixed by the binary, naming the value (the
                // agent's says a bad value is its configuration's; a file
                // the configuration names is reported by its path).
                let prefix = if *binary == "mctc-agent" && !names.starts_with('/') {
                    "mctc-agent: config: ".to_owned()
                } else {
                    format!("{binary}: ")
                };
                let ok = code == 2
                    && lines.len() == 1
                    && lines
                        .iter()
                        .all(|l| l.starts_with(&prefix) && l.contains(names))
                    && !stderr.contains("panicked");
                if ok {
                    refused += 1;
                } else {
                    out.fail(format!(
                        "{binary} case {i} ({names}): exit {code}, stderr {stderr:?}"
                    ));
                }
            }
            Err(e) => out.fail(e),
        }
    }
    out.require(!dir.path().join("gate.sock").exists(), || {
        "a gate socket was created".into()
    });
    out.observed = format!(
        "{refused}/{} bad or missing files refused: exit 2, one line naming the value, nothing started",
        files.len()
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_answer_is_read_as_json() {
        assert!(told_busy(b"{\"error\":\"busy\",\"v\":1}\n"));
        assert!(told_busy(b"{\"error\":\"busy\"}\n"));
        assert!(!told_busy(b"{\"error\":\"line too long\",\"v\":1}\n"));
        assert!(!told_busy(b"{\"error\":\"bu"));
    }
}

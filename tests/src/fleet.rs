//! A whole mctc fleet on loopback, made of the real parts: a private
//! Mosquitto (TLS, the shipped ACL), the real `mctc-authority` (keygen, the
//! fleet-manager CLI, `run`), the real `mctc-collector`, and devices made of
//! a private swtpm and the real `mctc-agent`.
//!
//! Used by the end-to-end tests, `cargo xtask demo`, `chaos` and `bench`, so
//! there is one way to stand a fleet up. Binaries come from
//! [`crate::bin_path`].

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mctc_shim::api::{AuthorizeAnswer, Reply, Request, Status};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{Broker, Proc, Swtpm, bin_path, wait_until};

/// The `iss` of every artifact in a test fleet.
pub const AUTHORITY_ID: &str = "fleet-authority";
/// How long a test waits for something that must happen.
pub const PATIENCE: Duration = Duration::from_secs(30);
/// The PCR measured files are extended into.
pub const MEASURED_PCR: u8 = 14;
/// The content of every device's measured file (its "controller binary").
pub const MEASURED_CONTENT: &[u8] = b"locker-controller v1.0\n";

/// The outcome of a CLI run.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// Runs a workspace binary to completion.
pub fn run(binary: &str, args: &[&str]) -> Output {
    let out = Command::new(bin_path(binary).unwrap())
        .args(args)
        .env("MCTC_LOG", "warn")
        .output()
        .unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// SHA-256 over the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        ctx.update(part);
    }
    ctx.finish().as_ref().try_into().unwrap()
}

/// The value of a freshly started swtpm's PCR after extending `digests` in
/// order (a fresh swtpm's PCRs 0–15 are zero).
pub fn extended(digests: &[[u8; 32]]) -> [u8; 32] {
    digests
        .iter()
        .fold([0u8; 32], |pcr, digest| sha256(&[&pcr, digest]))
}

/// The reference values every test device has: PCRs 0 and 7 of a fresh
/// swtpm, and the measured PCR after [`MEASURED_CONTENT`] was extended.
pub fn reference_lines(class: &str) -> String {
    let zero = hex::encode([0u8; 32]);
    let measured = hex::encode(extended(&[sha256(&[MEASURED_CONTENT])]));
    format!(
        "[classes.{class}.reference]\n0 = [\"{zero}\"]\n7 = [\"{zero}\"]\n{MEASURED_PCR} = [\"{measured}\"]\n"
    )
}

/// A class of the policy file with the fleet's baseline, `ttl_ms`, `hb_ms`
/// and the given scope entries (`[[classes.X.scope]]` TOML bodies).
pub fn class(name: &str, ttl_ms: u64, hb_ms: u64, scopes: &[&str]) -> String {
    let mut out = format!(
        "[classes.{name}]\npcrs = [0, 7, {MEASURED_PCR}]\nartifact_ttl_ms = {ttl_ms}\nheartbeat_ms = {hb_ms}\n{}",
        reference_lines(name)
    );
    for scope in scopes {
        out.push_str(&format!("[[classes.{name}.scope]]\n{scope}\n"));
    }
    out
}

/// Class `name` (60 s artifacts, 3 s heartbeat window, `unlock`) that also
/// quotes `pcr`, which has no reference value: every device of it is refused
/// for want of a baseline for that PCR.
pub fn uncovered_class(name: &str, pcr: u8) -> String {
    class(
        name,
        60_000,
        3_000,
        &["op = \"unlock\"\nfresh_attestation = false"],
    )
    .replacen(
        &format!("pcrs = [0, 7, {MEASURED_PCR}]"),
        &format!("pcrs = [0, 7, {MEASURED_PCR}, {pcr}]"),
        1,
    )
}

/// The test policy: class `locker` (60 s artifacts, 3 s heartbeat window)
/// and class `short` (2 s artifacts), both with `unlock`, `capture` (≤ 500.00
/// EUR) and `refund` (≤ 100.00, fresh attestation per operation).
pub fn test_policy() -> String {
    let scopes = [
        "op = \"unlock\"\nfresh_attestation = false",
        "op = \"capture\"\nmax_amount = 50000\ncurrency = \"EUR\"\nfresh_attestation = false",
        "op = \"refund\"\nmax_amount = 10000\nfresh_attestation = true",
    ];
    class("locker", 60_000, 3_000, &scopes) + &class("short", 2_000, 6_000, &scopes)
}

fn path_str(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

/// A broker, the authority (keys, database, policy; started on demand) and
/// optionally a collector.
#[derive(Debug)]
pub struct Fleet {
    // Dropped first so their logs are still there to print on failure.
    pub authority: Option<Proc>,
    pub collector: Option<Proc>,
    pub broker: Broker,
    pub dir: tempfile::TempDir,
    pub authority_pub: PathBuf,
    /// The collector's receipt public key (devices verify acks with it).
    pub collector_pub: PathBuf,
}

impl Fleet {
    /// A fleet with [`test_policy`].
    pub fn new() -> Fleet {
        Fleet::with_policy(&test_policy())
    }

    /// A fleet whose authority uses `policy` (TOML text).
    pub fn with_policy(policy: &str) -> Fleet {
        let broker = Broker::start().unwrap();
        let dir = tempfile::Builder::new()
            .prefix("mctc-fleet-")
            .tempdir()
            .unwrap();
        let keys = dir.path().join("keys");
        let out = run("mctc-authority", &["keygen", "--out", &path_str(&keys)]);
        assert_eq!(out.code, 0, "{out:?}");
        // The collector's own receipt key (never the authority's).
        let out = run("mctc-collector", &["keygen", "--out", &path_str(&keys)]);
        assert_eq!(out.code, 0, "{out:?}");
        std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
        let id = broker.identity("mctc-authority").unwrap();
        let config = format!(
            r#"authority_id = "{AUTHORITY_ID}"
signing_key = "{key}"
database = "{db}"
policy = "{policy}"
[broker]
url = "{url}"
ca = "{ca}"
cert = "{cert}"
key = "{client_key}"
keep_alive_secs = 5
[enrollment]
challenge_ttl_ms = 20000
[limits]
request_burst = 50
requests_per_minute = 6000
[metrics]
listen = "127.0.0.1:0"
"#,
            key = path_str(&keys.join("authority.key")),
            db = path_str(&dir.path().join("authority.db")),
            policy = path_str(&dir.path().join("policy.toml")),
            url = broker.url(),
            ca = path_str(&id.ca),
            cert = path_str(&id.cert),
            client_key = path_str(&id.key),
        );
        std::fs::write(dir.path().join("authority.toml"), config).unwrap();
        let collector = broker.identity("mctc-collector").unwrap();
        let config = format!(
            r#"[broker]
url = "{url}"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
keep_alive_secs = 5
[authority]
public_keys = ["{pubkey}"]
[store]
backend = "sqlite"
path = "{db}"
[ingest]
gap_grace_ms = 2000
[receipts]
key = "{receipt_key}"
[metrics]
listen = "127.0.0.1:0"
"#,
            url = broker.url(),
            ca = path_str(&collector.ca),
            cert = path_str(&collector.cert),
            key = path_str(&collector.key),
            pubkey = path_str(&keys.join("authority.pub")),
            db = path_str(&dir.path().join("collector.db")),
            receipt_key = path_str(&keys.join("receipt.key")),
        );
        std::fs::write(dir.path().join("collector.toml"), config).unwrap();
        Fleet {
            authority: None,
            collector: None,
            broker,
            authority_pub: keys.join("authority.pub"),
            collector_pub: keys.join("receipt.pub"),
            dir,
        }
    }

    pub fn config(&self) -> String {
        path_str(&self.dir.path().join("authority.toml"))
    }

    pub fn collector_config(&self) -> String {
        path_str(&self.dir.path().join("collector.toml"))
    }

    /// The fleet manager's CLI: `mctc-authority ARGS --config CONFIG`.
    pub fn cli(&self, args: &[&str]) -> Output {
        let config = self.config();
        let mut all = args.to_vec();
        all.extend(["--config", &config]);
        run("mctc-authority", &all)
    }

    fn start_logged(&self, binary: &str, config: &str, log: &Path, ready: &str) -> Proc {
        let before = std::fs::read_to_string(log).unwrap_or_default().len();
        let mut command = Command::new(bin_path(binary).unwrap());
        command
            .args(["run", "--config", config])
            .env("MCTC_LOG", "info");
        let proc = Proc::spawn_command(binary, command, log).unwrap();
        let up = wait_until(PATIENCE, || {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .get(before..)
                .is_some_and(|new| new.contains(ready))
        });
        assert!(
            up.is_some(),
            "{binary} did not come up:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        proc
    }

    pub fn start_authority(&mut self) {
        assert!(self.authority.is_none(), "authority already running");
        let log = self.dir.path().join("authority.log");
        self.authority = Some(self.start_logged(
            "mctc-authority",
            &self.config(),
            &log,
            "subscribed to device requests",
        ));
    }

    /// SIGKILL.
    pub fn kill_authority(&mut self) {
        if let Some(mut authority) = self.authority.take() {
            authority.kill();
        }
    }

    /// SIGTERM, and waits for the clean exit (the heartbeat lease is
    /// released on the way out).
    pub fn stop_authority(&mut self) {
        if let Some(mut authority) = self.authority.take() {
            authority.signal(rustix::process::Signal::TERM).unwrap();
            let status = authority.wait_timeout(PATIENCE);
            assert!(
                status.is_some_and(|s| s.success()),
                "authority did not stop cleanly ({status:?}):\n{}",
                self.authority_log()
            );
        }
    }

    /// SIGSTOP: the authority stays connected but says nothing.
    pub fn silence_authority(&self) {
        self.authority
            .as_ref()
            .unwrap()
            .signal(rustix::process::Signal::STOP)
            .unwrap();
    }

    pub fn resume_authority(&self) {
        self.authority
            .as_ref()
            .unwrap()
            .signal(rustix::process::Signal::CONT)
            .unwrap();
    }

    pub fn authority_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("authority.log")).unwrap_or_default()
    }

    pub fn start_collector(&mut self) {
        assert!(self.collector.is_none(), "collector already running");
        let log = self.dir.path().join("collector.log");
        self.collector = Some(self.start_logged(
            "mctc-collector",
            &self.collector_config(),
            &log,
            "subscribed to lineage and registry",
        ));
    }

    /// SIGTERM, and waits for the clean exit (what an operator does before
    /// a restore).
    pub fn stop_collector(&mut self) {
        if let Some(mut collector) = self.collector.take() {
            collector.signal(rustix::process::Signal::TERM).unwrap();
            let status = collector.wait_timeout(PATIENCE);
            assert!(
                status.is_some_and(|s| s.success()),
                "collector did not stop cleanly ({status:?}):\n{}",
                self.collector_log()
            );
        }
    }

    /// SIGKILL.
    pub fn kill_collector(&mut self) {
        if let Some(mut collector) = self.collector.take() {
            collector.kill();
        }
    }

    pub fn collector_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("collector.log")).unwrap_or_default()
    }

    /// Where the running authority serves `/metrics` (an ephemeral
    /// loopback port, read from its log).
    pub fn authority_metrics(&self) -> std::net::SocketAddr {
        crate::scrape::addr_from_log(&self.authority_log()).expect("authority metrics address")
    }

    /// Where the running collector serves `/metrics`.
    pub fn collector_metrics(&self) -> std::net::SocketAddr {
        crate::scrape::addr_from_log(&self.collector_log()).expect("collector metrics address")
    }

    /// A device with its own swtpm and configuration, registered in
    /// `class` with its EK pinned, not yet enrolled.
    pub fn device(&self, id: &str, class: &str) -> Device {
        self.device_with(id, class, "")
    }

    /// As [`Fleet::device`], with extra agent configuration appended.
    pub fn device_with(&self, id: &str, class: &str, extra: &str) -> Device {
        let device = Device::new(self, id, extra);
        let identity = device.cli(&["identity", "--json"]);
        assert_eq!(identity.code, 0, "{identity:?}");
        let ek = identity.json()["ek_sha256"].as_str().unwrap().to_owned();
        let out = self.cli(&["devices", "add", id, "--class", class, "--ek-sha256", &ek]);
        assert_eq!(out.code, 0, "{out:?}");
        device
    }
}

impl Default for Fleet {
    fn default() -> Fleet {
        Fleet::new()
    }
}

/// A device: swtpm, configuration, state directory, and the agent process.
#[derive(Debug)]
pub struct Device {
    pub agent: Option<Proc>,
    pub swtpm: Swtpm,
    pub id: String,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub measured_file: PathBuf,
}

impl Device {
    fn new(fleet: &Fleet, id: &str, extra: &str) -> Device {
        let swtpm = Swtpm::start().unwrap();
        let dir = tempfile::Builder::new()
            .prefix(&format!("mctc-{id}-"))
            .tempdir()
            .unwrap();
        let identity = fleet.broker.identity(id).unwrap();
        let measured = dir.path().join("controller.bin");
        std::fs::write(&measured, MEASURED_CONTENT).unwrap();
        let socket = dir.path().join("gate.sock");
        let text = format!(
            r#"device_id = "{id}"
state_dir = "{state}"
[tpm]
tcti = "{tcti}"
allow_software_tpm = true
[broker]
url = "{url}"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
keep_alive_secs = 5
[authority]
public_keys = ["{pubkey}"]
issuer = "{AUTHORITY_ID}"
[collector]
receipt_keys = ["{collector_pub}"]
[attestation]
pcrs = [0, 7, {MEASURED_PCR}]
answer_timeout_ms = 2000
retry_min_ms = 200
retry_max_ms = 1000
[measured]
pcr = {MEASURED_PCR}
files = ["{measured}"]
[gate]
socket = "{socket}"
[status]
interval_ms = 2000
{extra}
"#,
            state = path_str(&dir.path().join("state")),
            tcti = swtpm.tcti(),
            url = fleet.broker.url(),
            ca = path_str(&identity.ca),
            cert = path_str(&identity.cert),
            key = path_str(&identity.key),
            pubkey = path_str(&fleet.authority_pub),
            collector_pub = path_str(&fleet.collector_pub),
            measured = path_str(&measured),
            socket = path_str(&socket),
        );
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, text).unwrap();
        Device {
            agent: None,
            swtpm,
            id: id.to_owned(),
            dir,
            config,
            socket,
            measured_file: measured,
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn lineage_dir(&self) -> PathBuf {
        self.state_dir().join("lineage")
    }

    /// `mctc-agent ARGS --config CONFIG`.
    pub fn cli(&self, args: &[&str]) -> Output {
        let config = path_str(&self.config);
        let mut all = args.to_vec();
        all.extend(["--config", &config]);
        run("mctc-agent", &all)
    }

    pub fn enroll(&self) {
        let out = self.cli(&["enroll", "--timeout", "30"]);
        assert_eq!(out.code, 0, "enroll failed: {out:?}");
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts `mctc-agent run` and waits for its gate socket.
    pub fn start(&mut self) {
        assert!(self.agent.is_none(), "agent already running");
        let mut command = Command::new(bin_path("mctc-agent").unwrap());
        command
            .args(["run", "--config", &path_str(&self.config)])
            .env("MCTC_LOG", "info,mctc_agent=debug");
        self.agent = Some(Proc::spawn_command("mctc-agent", command, &self.log_path()).unwrap());
        let up = wait_until(PATIENCE, || self.request(&Request::status()).is_some());
        assert!(
            up.is_some(),
            "agent socket did not come up:\n{}",
            self.log()
        );
    }

    /// SIGTERM; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut agent = self.agent.take().expect("agent running");
        agent.signal(rustix::process::Signal::TERM).unwrap();
        agent
            .wait_timeout(Duration::from_secs(20))
            .expect("agent stops on SIGTERM")
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            agent.kill();
        }
    }

    pub fn alive(&mut self) -> bool {
        self.agent
            .as_mut()
            .is_some_and(|a| a.try_status().is_none())
    }

    pub fn pid(&self) -> u32 {
        self.agent.as_ref().and_then(Proc::pid).unwrap()
    }

    /// One request on the gate socket (`None`: unreachable, or no answer
    /// within 30 s): a typed `api::Request`, or any JSON a test wants to
    /// send (malformed requests included). The answer is the raw JSON, so
    /// tests check the documented bytes independently of the schema types.
    pub fn request(&self, request: &(impl Serialize + ?Sized)) -> Option<Value> {
        gate_request(&self.socket, request, Duration::from_secs(30))
    }

    /// The status as raw JSON (`{"state":"unreachable"}` when the agent
    /// does not answer).
    pub fn status(&self) -> Value {
        self.request(&Request::status())
            .unwrap_or_else(|| json!({"state": "unreachable"}))
    }

    /// The status through the schema (`None`: unreachable, an error
    /// answer, or a status the schema does not read).
    pub fn gate_status(&self) -> Option<Status> {
        let answer = self.request(&Request::status())?;
        serde_json::from_value::<Reply<Status>>(answer)
            .ok()?
            .into_result()
            .ok()
    }

    /// The gate's state by name, `unreachable` when there is no status.
    pub fn state(&self) -> String {
        self.gate_status()
            .map_or_else(|| "unreachable".to_owned(), |s| s.state.name().to_owned())
    }

    /// Asks the gate; returns the whole answer (an unreachable agent is a
    /// deny, as for the device's own software).
    pub fn authorize(
        &self,
        op: &str,
        amount: Option<u64>,
        currency: Option<&str>,
        reference: Option<&str>,
    ) -> Value {
        self.request(&authorize_request(op, amount, currency, reference))
            .unwrap_or_else(|| json!({"decision": "deny", "reason": "unreachable"}))
    }

    /// Whether `unlock` is permitted right now (read through the schema:
    /// anything but a well-formed permit is a deny).
    pub fn permits(&self) -> bool {
        let answer = self.authorize("unlock", None, None, None);
        serde_json::from_value::<AuthorizeAnswer>(answer).is_ok_and(|a| a.permits())
    }

    pub fn wait_state(&self, state: &str, timeout: Duration) -> Option<Duration> {
        wait_until(timeout, || self.state() == state)
    }

    /// Waits for the gate to open (asserting it does).
    pub fn wait_open(&self) {
        let open = self.wait_state("open", PATIENCE);
        assert!(
            open.is_some(),
            "gate did not open: {}\n--- agent log ---\n{}",
            self.status(),
            self.log()
        );
    }

    /// Enroll, start, wait for the gate to open.
    pub fn bring_up(&mut self) {
        self.enroll();
        self.start();
        self.wait_open();
    }
}

/// The gate socket's `authorize` request (the schema's
/// `api::Request::authorize`), as JSON.
pub fn authorize_request(
    op: &str,
    amount: Option<u64>,
    currency: Option<&str>,
    reference: Option<&str>,
) -> Value {
    serde_json::to_value(Request::authorize(op, amount, currency, reference))
        .expect("the request schema serializes")
}

/// One line-delimited JSON request on a gate socket, as the device's own
/// software would make it (the shim's schema, independent of the agent's
/// code).
pub fn gate_request(
    socket: &Path,
    request: &(impl Serialize + ?Sized),
    timeout: Duration,
) -> Option<Value> {
    let mut stream = UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    let mut line = serde_json::to_string(request).ok()?;
    line.push('\n');
    stream.write_all(line.as_bytes()).ok()?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).ok()?;
    serde_json::from_str(answer.trim_end()).ok()
}

pub use crate::mqtt::{MqttClient, Received};

/// Waits (up to 120 s) until the collector acknowledged every record
/// `device`'s agent wrote, and returns the acknowledged seq seen then (the
/// agent may write more records, such as a checkpoint, right after, so a
/// later status is not the bound).
pub fn wait_all_acked(fleet: &Fleet, device: &Device) -> u64 {
    let mut through = None;
    let drained = wait_until(Duration::from_secs(120), || {
        let status = device.status();
        let next = status["lineage"]["next_seq"].as_u64().unwrap_or(u64::MAX);
        through = status["lineage"]["acked_seq"]
            .as_u64()
            .filter(|acked| acked + 1 >= next);
        through.is_some()
    });
    assert!(
        drained.is_some(),
        "{}: not all acknowledged: {}\n--- collector ---\n{}",
        device.id,
        device.status(),
        fleet.collector_log()
    );
    through.unwrap_or_default()
}

/// Milliseconds since `start`, for messages.
pub fn ms(start: Instant) -> u128 {
    start.elapsed().as_millis()
}

/// Clients hammering a device's gate socket with `unlock` requests, each with
/// a unique `ref`, collecting every permit answered: (lineage seq, ref).
#[derive(Debug)]
pub struct Burst {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    permits: Arc<Mutex<Vec<(u64, String)>>>,
}

impl Burst {
    /// Starts `clients` threads asking `device`'s gate until [`Burst::stop`].
    pub fn start(device: &Device, clients: usize) -> Burst {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let permits = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|client| {
                let socket = device.socket.clone();
                let stop = Arc::clone(&stop);
                let permits = Arc::clone(&permits);
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let reference = format!("c{client}-{i}");
                        i += 1;
                        let request = Request::authorize("unlock", None, None, Some(&reference));
                        let answer = gate_request(&socket, &request, Duration::from_secs(5))
                            .map(serde_json::from_value::<Reply<AuthorizeAnswer>>);
                        match answer {
                            Some(Ok(Reply::Ok(answer))) if answer.permits() => {
                                let seq = answer.seq.expect("a permit carries its seq");
                                permits.lock().unwrap().push((seq, reference));
                            }
                            Some(_) => {}
                            None => std::thread::sleep(Duration::from_millis(5)),
                        }
                    }
                })
            })
            .collect();
        Burst {
            stop,
            threads,
            permits,
        }
    }

    /// Permits answered so far.
    pub fn count(&self) -> usize {
        self.permits.lock().unwrap().len()
    }

    /// Stops the clients and returns every permit they were answered.
    pub fn stop(self) -> Vec<(u64, String)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        self.permits.lock().unwrap().clone()
    }
}

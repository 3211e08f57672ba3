//! Fixtures for the agent's end-to-end tests: a private Mosquitto with the
//! shipped ACL, the real `mctc-authority` binary (keygen, CLI, `run`), and
//! devices made of a private swtpm and the real `mctc-agent` binary.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test fixtures; each test file uses a different subset"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mctc_agent::lineage::store::read_range;
use mctc_shim::lineage::{Body, ChainVerifier, Record, Step};
use mctc_shim::{DeviceId, Message, RingCrypto};
use mctc_tests::{Broker, Proc, Swtpm, bin_path, wait_until};
use serde_json::{Value, json};

pub const AUTHORITY_ID: &str = "fleet-authority";
/// How long a test waits for something that must happen.
pub const PATIENCE: Duration = Duration::from_secs(30);
/// The PCR measured files are extended into.
pub const MEASURED_PCR: u8 = 14;

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

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        ctx.update(part);
    }
    ctx.finish().as_ref().try_into().unwrap()
}

/// The value of a fresh swtpm PCR after extending `digests` in order.
pub fn extended(digests: &[[u8; 32]]) -> [u8; 32] {
    digests
        .iter()
        .fold([0u8; 32], |pcr, digest| sha256(&[&pcr, digest]))
}

/// A test policy: class `locker` (PCRs 0, 7 and the measured PCR), class
/// `short` (2 s artifacts). `measured` is the digest of the device's
/// measured file.
pub fn policy(measured: [u8; 32]) -> String {
    let zero = hex::encode([0u8; 32]);
    let pcr14 = hex::encode(extended(&[measured]));
    let scope = |class: &str| {
        format!(
            r#"
[[classes.{class}.scope]]
op = "unlock"
fresh_attestation = false
[[classes.{class}.scope]]
op = "capture"
max_amount = 50000
currency = "EUR"
fresh_attestation = false
[[classes.{class}.scope]]
op = "refund"
max_amount = 10000
fresh_attestation = true
"#
        )
    };
    format!(
        r#"
[classes.locker]
pcrs = [0, 7, {MEASURED_PCR}]
artifact_ttl_ms = 60000
heartbeat_ms = 3000
[classes.locker.reference]
0 = ["{zero}"]
7 = ["{zero}"]
{MEASURED_PCR} = ["{pcr14}"]
{locker_scope}
[classes.short]
pcrs = [0, 7, {MEASURED_PCR}]
artifact_ttl_ms = 2000
heartbeat_ms = 6000
[classes.short.reference]
0 = ["{zero}"]
7 = ["{zero}"]
{MEASURED_PCR} = ["{pcr14}"]
{short_scope}
"#,
        locker_scope = scope("locker"),
        short_scope = scope("short"),
    )
}

/// The content of every test device's measured file.
pub const MEASURED_CONTENT: &[u8] = b"locker-controller v1.0\n";

/// A broker, the authority's key, database and (optionally) running
/// authority.
pub struct Fleet {
    // Dropped first so their logs are still there to print on failure.
    pub authority: Option<Proc>,
    pub broker: Broker,
    pub dir: tempfile::TempDir,
    pub authority_pub: PathBuf,
    starts: usize,
}

impl Fleet {
    pub fn new() -> Fleet {
        let broker = Broker::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let out = run(
            "mctc-authority",
            &["keygen", "--out", keys.to_str().unwrap()],
        );
        assert_eq!(out.code, 0, "{out:?}");
        std::fs::write(
            dir.path().join("policy.toml"),
            policy(sha256(&[MEASURED_CONTENT])),
        )
        .unwrap();
        let id = broker.identity("mctc-authority").unwrap();
        let p = |p: &Path| p.to_str().unwrap().to_owned();
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
"#,
            key = p(&keys.join("authority.key")),
            db = p(&dir.path().join("authority.db")),
            policy = p(&dir.path().join("policy.toml")),
            url = broker.url(),
            ca = p(&id.ca),
            cert = p(&id.cert),
            client_key = p(&id.key),
        );
        std::fs::write(dir.path().join("authority.toml"), config).unwrap();
        Fleet {
            authority: None,
            broker,
            authority_pub: keys.join("authority.pub"),
            dir,
            starts: 0,
        }
    }

    pub fn config(&self) -> String {
        self.dir
            .path()
            .join("authority.toml")
            .to_str()
            .unwrap()
            .to_owned()
    }

    /// The fleet manager's CLI.
    pub fn cli(&self, args: &[&str]) -> Output {
        let config = self.config();
        let mut all = args.to_vec();
        all.extend(["--config", &config]);
        run("mctc-authority", &all)
    }

    pub fn start_authority(&mut self) {
        assert!(self.authority.is_none(), "authority already running");
        let log = self.dir.path().join("authority.log");
        let before = std::fs::read_to_string(&log).unwrap_or_default().len();
        let mut command = Command::new(bin_path("mctc-authority").unwrap());
        command
            .args(["run", "--config", &self.config()])
            .env("MCTC_LOG", "info");
        self.authority = Some(Proc::spawn_command("mctc-authority", command, &log).unwrap());
        self.starts += 1;
        let up = wait_until(PATIENCE, || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .get(before..)
                .is_some_and(|new| new.contains("subscribed to device requests"))
        });
        assert!(
            up.is_some(),
            "authority did not come up:\n{}",
            self.authority_log()
        );
    }

    pub fn kill_authority(&mut self) {
        if let Some(mut authority) = self.authority.take() {
            authority.kill();
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

    /// A device with its own swtpm and configuration, registered in
    /// `class` with its EK pinned, not yet enrolled.
    pub fn device(&self, id: &str, class: &str) -> Device {
        self.device_with(id, class, "")
    }

    /// As [`Fleet::device`], with extra configuration lines appended.
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

/// A device: swtpm, configuration, state directory, and the agent process.
pub struct Device {
    pub agent: Option<Proc>,
    pub swtpm: Swtpm,
    pub id: String,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
}

impl Device {
    fn new(fleet: &Fleet, id: &str, extra: &str) -> Device {
        let swtpm = Swtpm::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let identity = fleet.broker.identity(id).unwrap();
        let measured = dir.path().join("controller.bin");
        std::fs::write(&measured, MEASURED_CONTENT).unwrap();
        let socket = dir.path().join("gate.sock");
        let p = |p: &Path| p.to_str().unwrap().to_owned();
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
            state = p(&dir.path().join("state")),
            tcti = swtpm.tcti(),
            url = fleet.broker.url(),
            ca = p(&identity.ca),
            cert = p(&identity.cert),
            key = p(&identity.key),
            pubkey = p(&fleet.authority_pub),
            measured = p(&measured),
            socket = p(&socket),
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
        }
    }

    pub fn device_id(&self) -> DeviceId {
        DeviceId::new(&self.id).unwrap()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn lineage_dir(&self) -> PathBuf {
        self.state_dir().join("lineage")
    }

    /// `mctc-agent ARGS --config CONFIG`.
    pub fn cli(&self, args: &[&str]) -> Output {
        let config = self.config.to_str().unwrap().to_owned();
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
            .args(["run", "--config", self.config.to_str().unwrap()])
            .env("MCTC_LOG", "info,mctc_agent=debug");
        self.agent = Some(Proc::spawn_command("mctc-agent", command, &self.log_path()).unwrap());
        let up = wait_until(PATIENCE, || self.request(&json!({"status": {}})).is_some());
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

    /// One request on the gate socket (`None`: unreachable).
    pub fn request(&self, request: &Value) -> Option<Value> {
        mctc_agent::socket::request(&self.socket, request, Duration::from_secs(30)).ok()
    }

    pub fn status(&self) -> Value {
        self.request(&json!({"status": {}}))
            .unwrap_or_else(|| json!({"state": "unreachable"}))
    }

    pub fn state(&self) -> String {
        self.status()["state"].as_str().unwrap_or("?").to_owned()
    }

    /// Asks the gate; returns the whole answer.
    pub fn authorize(
        &self,
        op: &str,
        amount: Option<u64>,
        currency: Option<&str>,
        reference: Option<&str>,
    ) -> Value {
        let mut request = serde_json::Map::new();
        request.insert("op".into(), json!(op));
        if let Some(amount) = amount {
            request.insert("amount".into(), json!(amount));
        }
        if let Some(currency) = currency {
            request.insert("currency".into(), json!(currency));
        }
        if let Some(reference) = reference {
            request.insert("ref".into(), json!(reference));
        }
        self.request(&json!({ "authorize": request }))
            .unwrap_or_else(|| json!({"decision": "deny", "reason": "unreachable"}))
    }

    /// Whether `unlock` is permitted right now.
    pub fn permits(&self) -> bool {
        self.authorize("unlock", None, None, None)["decision"] == "permit"
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

    /// Every record in the device's lineage directory, decoded, with the
    /// chain verified from genesis.
    pub fn lineage(&self) -> Vec<(u64, Vec<u8>)> {
        let frames = read_range(&self.lineage_dir(), 0, u64::MAX, usize::MAX, usize::MAX).unwrap();
        let mut chain = ChainVerifier::genesis(self.device_id());
        for frame in &frames {
            match chain.push(&RingCrypto, &frame.payload) {
                Ok(Step::Appended { .. }) => {}
                other => panic!("lineage chain breaks at {}: {other:?}", frame.seq),
            }
        }
        frames.into_iter().map(|f| (f.seq, f.payload)).collect()
    }
}

/// Decodes one record.
pub fn record(bytes: &[u8]) -> Record<'_> {
    Record::decode(bytes).unwrap()
}

/// Kind names of the records, for assertions.
pub fn kinds(records: &[(u64, Vec<u8>)]) -> Vec<&'static str> {
    records
        .iter()
        .map(|(_, bytes)| match record(bytes).body {
            Body::AgentStart(_) => "start",
            Body::AgentStop(_) => "stop",
            Body::Enrolled(_) => "enrolled",
            Body::Attested(_) => "attested",
            Body::ArtifactInstalled(_) => "installed",
            Body::GateOpened(_) => "opened",
            Body::GateClosed(_) => "closed",
            Body::GateContained(_) => "contained",
            Body::GateRevoked(_) => "revoked",
            Body::GateRestored(_) => "restored",
            Body::Decision(_) => "decision",
            Body::Drift(_) => "drift",
            Body::HeartbeatLapse(_) => "lapse",
            Body::ControlReceived(_) => "control",
            Body::Checkpoint(_) => "checkpoint",
        })
        .collect()
}

/// A received message: topic, payload, retain flag.
pub type Received = (String, Vec<u8>, bool);

/// A plain MQTT client (its own thread and runtime) with broker identity
/// `cn`, recording what it receives.
pub struct MqttClient {
    client: rumqttc::AsyncClient,
    received: Arc<Mutex<Vec<Received>>>,
    _thread: std::thread::JoinHandle<()>,
}

impl MqttClient {
    pub fn connect(broker: &Broker, cn: &str, client_id: &str, filters: &[&str]) -> MqttClient {
        let identity = broker.identity(cn).unwrap();
        let mut options = broker.mqtt_options(client_id, &identity).unwrap();
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 64);
        let received = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&received);
        let subscriber = client.clone();
        let filters: Vec<String> = filters.iter().map(|f| (*f).to_owned()).collect();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut ready = Some(ready_tx);
                loop {
                    match eventloop.poll().await {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                            for filter in &filters {
                                subscriber
                                    .subscribe(filter, rumqttc::QoS::AtLeastOnce)
                                    .await
                                    .unwrap();
                            }
                            if filters.is_empty()
                                && let Some(ready) = ready.take()
                            {
                                let _ = ready.send(());
                            }
                        }
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                            if let Some(ready) = ready.take() {
                                let _ = ready.send(());
                            }
                        }
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                            sink.lock()
                                .unwrap()
                                .push((p.topic, p.payload.to_vec(), p.retain));
                        }
                        Ok(_) => {}
                        Err(_) => {
                            if ready.is_none() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("test MQTT client connected and subscribed");
        MqttClient {
            client,
            received,
            _thread: thread,
        }
    }

    /// Queues a publish, waiting while the client's queue is full.
    pub fn publish(&self, topic: &str, payload: &[u8], retain: bool) {
        let start = Instant::now();
        while self
            .client
            .try_publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload.to_vec())
            .is_err()
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "test publish stuck"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn received_on(&self, topic: &str) -> Vec<Vec<u8>> {
        self.received()
            .into_iter()
            .filter(|(t, _, _)| t == topic)
            .map(|(_, p, _)| p)
            .collect()
    }
}

/// Milliseconds since `start`, for messages.
pub fn ms(start: Instant) -> u128 {
    start.elapsed().as_millis()
}

//! Fixtures for the authority's integration tests: a private Mosquitto, the
//! real `mctc-authority` binary (keygen, CLI, `run`), and devices played by
//! mctc-attest's device side on private swtpm instances, speaking MQTT with
//! their own broker identity.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Broker, Proc, Swtpm, SwtpmOptions, bin_path, wait_until};
use mctc_attest::PcrSelection;
use mctc_attest::device::{AkKind, EkKind, Identity, Tpm, TpmConfig};
use mctc_shim::artifact::Claims;
use mctc_shim::cose::Signed;
use mctc_shim::error::EnvelopeError;
use mctc_shim::messages::{
    EnrollChallenge, EnrollProof, EnrollRequest, EnrollResult, EnrollStatus, Evidence, Nonce,
    NoncePurpose, NonceRequest, Refusal, enroll_proof,
};
use mctc_shim::topics::{DeviceTopic, HEARTBEAT};
use mctc_shim::wire::{Bstr, Bytes, List, Version};
use mctc_shim::{AuthorityKey, DeviceId, Error as ShimError, Message, RingCrypto};

pub const AUTHORITY_ID: &str = "fleet-authority";
pub const ZERO: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// How long a test waits for an answer that must come.
pub const ANSWER: Duration = Duration::from_secs(10);
/// How long a test waits to be sure an answer does not come.
pub const SILENCE: Duration = Duration::from_millis(1500);

/// The test policy: `locker` (PCRs 0 and 7, reference zeros: a fresh
/// swtpm), `kiosk` (no baseline), `tofu` (unknown ids enroll).
pub fn policy() -> String {
    format!(
        r#"
[classes.locker]
pcrs = [0, 7]
artifact_ttl_ms = 45000
heartbeat_ms = 3000
[classes.locker.reference]
0 = ["{ZERO}"]
7 = ["{ZERO}"]
[[classes.locker.scope]]
op = "unlock"
fresh_attestation = false
[[classes.locker.scope]]
op = "capture"
max_amount = 2500
currency = "EUR"
fresh_attestation = true

[classes.kiosk]
pcrs = [0, 7]
artifact_ttl_ms = 20000
heartbeat_ms = 6000

[classes.tofu]
pcrs = [0]
artifact_ttl_ms = 10000
heartbeat_ms = 6000
allow_first_use = true
[classes.tofu.reference]
0 = ["{ZERO}"]
"#
    )
}

/// The outcome of a CLI run.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

/// Runs `mctc-authority` with `args`.
pub fn cli(args: &[&str]) -> Output {
    let out = Command::new(bin_path("mctc-authority").unwrap())
        .args(args)
        .output()
        .unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A broker, an issuer key, a database and any number of authority
/// instances on them.
#[derive(Debug)]
pub struct Fleet {
    // Dropped first, so their logs are still there to print on failure.
    pub instances: Vec<Option<Proc>>,
    pub broker: Broker,
    pub dir: tempfile::TempDir,
    pub public_key: [u8; 32],
    pub ek_ca_bundle: Option<PathBuf>,
}

impl Default for Fleet {
    fn default() -> Fleet {
        Fleet::new()
    }
}

impl Fleet {
    /// A fleet with the test policy and no running authority yet.
    pub fn new() -> Fleet {
        Fleet::with(&policy(), None)
    }

    /// A fleet with `policy` and, optionally, a TPM vendor CA bundle.
    pub fn with(policy: &str, ek_ca_bundle: Option<PathBuf>) -> Fleet {
        let broker = Broker::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let out = cli(&["keygen", "--out", keys.to_str().unwrap(), "--json"]);
        assert_eq!(out.code, 0, "{out:?}");
        let public = hex::decode(out.json()["public_key"].as_str().unwrap()).unwrap();
        std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
        let fleet = Fleet {
            broker,
            dir,
            public_key: public.try_into().unwrap(),
            instances: Vec::new(),
            ek_ca_bundle,
        };
        fleet.write_config("authority.toml", "");
        fleet
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("authority.toml")
    }

    pub fn config_str(&self) -> String {
        self.config().to_str().unwrap().to_owned()
    }

    /// Writes a configuration file named `name` with `extra` appended.
    pub fn write_config(&self, name: &str, extra: &str) -> PathBuf {
        let id = self.broker.identity("mctc-authority").unwrap();
        let bundle = self
            .ek_ca_bundle
            .as_ref()
            .map(|p| format!("ek_ca_bundle = {:?}\n", p.to_str().unwrap()))
            .unwrap_or_default();
        let text = format!(
            r#"authority_id = "{AUTHORITY_ID}"
signing_key = "keys/authority.key"
database = "authority.db"
policy = "policy.toml"
[broker]
url = "{url}"
ca = {ca:?}
cert = {cert:?}
key = {key:?}
keep_alive_secs = 5
[enrollment]
{bundle}challenge_ttl_ms = 20000
{extra}
"#,
            url = self.broker.url(),
            ca = id.ca.to_str().unwrap(),
            cert = id.cert.to_str().unwrap(),
            key = id.key.to_str().unwrap(),
        );
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn keys(&self) -> Vec<AuthorityKey> {
        vec![AuthorityKey::new(&RingCrypto, self.public_key)]
    }

    /// The fleet manager's CLI on this fleet's configuration.
    pub fn cli(&self, args: &[&str]) -> Output {
        let config = self.config_str();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", &config]);
        cli(&all)
    }

    /// `devices add ID --class CLASS`, which must succeed.
    pub fn add(&self, id: &str, class: &str, extra: &[&str]) {
        let mut args = vec!["devices", "add", id, "--class", class];
        args.extend_from_slice(extra);
        let out = self.cli(&args);
        assert_eq!(out.code, 0, "{out:?}");
    }

    /// Starts an authority instance with `config`; returns its index.
    pub fn start_with(&mut self, config: &Path) -> usize {
        self.start_with_env(config, &[])
    }

    /// Starts an authority instance with `config` and extra environment.
    pub fn start_with_env(&mut self, config: &Path, env: &[(&str, &str)]) -> usize {
        let index = self.instances.len();
        let log = self.dir.path().join(format!("authority-{index}.log"));
        let mut command = Command::new(bin_path("mctc-authority").unwrap());
        command
            .args(["run", "--config", config.to_str().unwrap()])
            .env("MCTC_LOG", "info")
            .envs(env.iter().copied());
        let proc = Proc::spawn_command("mctc-authority", command, &log).unwrap();
        self.instances.push(Some(proc));
        // Logged on the link's `Subscribed`: the broker has granted every
        // request topic, so whatever a device publishes from now on is heard.
        let up = wait_until(ANSWER, || {
            self.log(index).contains("subscribed to device requests")
        });
        assert!(
            up.is_some(),
            "authority did not subscribe:\n{}",
            self.log(index)
        );
        index
    }

    /// Starts an authority instance with the fleet's main configuration.
    pub fn start(&mut self) -> usize {
        let config = self.config();
        self.start_with(&config)
    }

    pub fn log(&self, index: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("authority-{index}.log")))
            .unwrap_or_default()
    }

    pub fn kill(&mut self, index: usize) {
        if let Some(mut proc) = self.instances[index].take() {
            proc.kill();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self, index: usize) {
        if let Some(mut proc) = self.instances[index].take() {
            proc.signal(rustix::process::Signal::TERM).unwrap();
            let status = proc
                .wait_timeout(Duration::from_secs(10))
                .expect("stops on SIGTERM");
            assert!(status.success(), "exit status {status}:\n{}", proc.log());
        }
    }

    pub fn alive(&mut self, index: usize) -> bool {
        self.instances[index]
            .as_mut()
            .is_some_and(|p| p.try_status().is_none())
    }

    /// A plain MQTT client with broker identity `cn`, subscribed to `filters`.
    pub async fn client(&self, cn: &str, filters: &[&str]) -> Client {
        Client::connect(&self.broker, cn, filters).await
    }
}

/// The workspace's one MQTT test client.
pub use crate::mqtt::Client;

/// What the authority answered on the artifact topic.
#[derive(Debug)]
pub enum Answer {
    Artifact(Vec<u8>),
    /// Boxed: a refusal carries its bounded PCR findings inline.
    Refusal(Box<Refusal>),
}

impl Answer {
    pub fn refusal(self) -> Refusal {
        match self {
            Answer::Refusal(r) => *r,
            Answer::Artifact(_) => panic!("expected a refusal, got an artifact"),
        }
    }

    pub fn artifact(self) -> Vec<u8> {
        match self {
            Answer::Artifact(a) => a,
            Answer::Refusal(r) => panic!("expected an artifact, got {r:?}"),
        }
    }
}

/// A device: its own swtpm, TPM worker and MQTT identity.
#[derive(Debug)]
pub struct Device {
    pub id: DeviceId,
    pub tpm: Tpm,
    pub identity: Identity,
    pub swtpm: Swtpm,
    pub mqtt: Client,
    keys: Vec<AuthorityKey>,
    _dir: tempfile::TempDir,
}

pub fn topic(which: DeviceTopic, id: &DeviceId) -> String {
    which.topic(id).to_string()
}

impl Device {
    pub async fn new(fleet: &Fleet, id: &str) -> Device {
        Device::with(fleet, id, SwtpmOptions::default(), EkKind::EccP256).await
    }

    pub async fn with(fleet: &Fleet, id: &str, options: SwtpmOptions, ek: EkKind) -> Device {
        Device::on(fleet, id, Swtpm::start_with(options).unwrap(), ek).await
    }

    /// A device on an already started swtpm.
    pub async fn on(fleet: &Fleet, id: &str, swtpm: Swtpm, ek: EkKind) -> Device {
        let dir = tempfile::tempdir().unwrap();
        let tpm = Tpm::open(TpmConfig {
            tcti: swtpm.tcti(),
            allow_software_tpm: true,
            ek_kind: ek,
            ak_kind: AkKind::EccP256,
            ..TpmConfig::new(dir.path())
        })
        .await
        .unwrap();
        let identity = tpm.identity().await.unwrap();
        let filters = [
            format!("mctc/v1/dev/{id}/#"),
            format!("mctc/v1/enroll/{id}/#"),
            HEARTBEAT.to_owned(),
        ];
        let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
        let mqtt = fleet.client(id, &filters).await;
        Device {
            id: DeviceId::new(id).unwrap(),
            tpm,
            identity,
            swtpm,
            mqtt,
            keys: fleet.keys(),
            _dir: dir,
        }
    }

    pub fn ek_sha256_hex(&self) -> String {
        hex::encode(self.identity.ek_fingerprint())
    }

    pub async fn send(&self, which: DeviceTopic, payload: Vec<u8>) {
        self.mqtt
            .publish(&topic(which, &self.id), payload, false)
            .await;
    }

    pub async fn next(&mut self, which: DeviceTopic, wait: Duration) -> Option<Vec<u8>> {
        let t = topic(which, &self.id);
        self.mqtt.next_on(&t, wait).await
    }

    pub fn enroll_request(&self, request_id: [u8; 16], identity: &Identity) -> Vec<u8> {
        let req = EnrollRequest {
            v: Version::CURRENT,
            request_id: Bytes(request_id),
            device: self.id.clone(),
            ek_public: Bstr(&identity.ek_public),
            ek_cert: identity.ek_cert.as_deref().map(Bstr),
            ak_public: Bstr(&identity.ak_public),
            ak_name: Bstr(&identity.ak_name),
        };
        let mut buf = vec![0u8; 8192];
        req.encode(&mut buf).unwrap().to_vec()
    }

    /// Sends an enrollment request; returns the challenge or, if the
    /// authority refused at once, its status.
    pub async fn request_enrollment(
        &mut self,
        request_id: [u8; 16],
    ) -> Result<(Vec<u8>, Vec<u8>), EnrollStatus> {
        let identity = self.identity.clone();
        self.send(
            DeviceTopic::EnrollRequest,
            self.enroll_request(request_id, &identity),
        )
        .await;
        let challenge_topic = topic(DeviceTopic::EnrollChallenge, &self.id);
        let result_topic = topic(DeviceTopic::EnrollResult, &self.id);
        let deadline = Instant::now() + ANSWER;
        while Instant::now() < deadline {
            if let Some(bytes) = self
                .mqtt
                .next_on(&challenge_topic, Duration::from_millis(50))
                .await
            {
                // Another attempt's (another client with this identity).
                let c = EnrollChallenge::decode(&bytes).unwrap();
                if c.request_id.0 == request_id {
                    return Ok((c.credential_blob.0.to_vec(), c.encrypted_secret.0.to_vec()));
                }
            }
            if let Some(bytes) = self
                .mqtt
                .next_on(&result_topic, Duration::from_millis(50))
                .await
            {
                let r = self.open_result(&bytes);
                if r.request_id.0 == request_id {
                    return Err(r.status);
                }
            }
        }
        panic!("no answer to the enrollment request");
    }

    pub fn open_result(&self, bytes: &[u8]) -> EnrollResult {
        let r = EnrollResult::open(bytes, &self.keys, &RingCrypto).unwrap();
        assert_eq!(r.sub, self.id);
        r
    }

    pub async fn send_proof(&mut self, request_id: [u8; 16], proof: [u8; 32]) -> EnrollStatus {
        let mut buf = [0u8; 1024];
        let bytes = EnrollProof {
            v: Version::CURRENT,
            request_id: Bytes(request_id),
            proof: Bytes(proof),
        }
        .encode(&mut buf)
        .unwrap()
        .to_vec();
        self.send(DeviceTopic::EnrollProof, bytes).await;
        loop {
            let result = self
                .next(DeviceTopic::EnrollResult, ANSWER)
                .await
                .expect("an enrollment result");
            let r = self.open_result(&result);
            if r.request_id.0 == request_id {
                return r.status;
            }
        }
    }

    /// The whole enrollment: request, activate the credential, prove.
    pub async fn enroll(&mut self) -> EnrollStatus {
        let request_id = rand_bytes::<16>();
        let (blob, secret) = match self.request_enrollment(request_id).await {
            Ok(c) => c,
            Err(status) => return status,
        };
        let secret = self.tpm.activate_credential(blob, secret).await.unwrap();
        let proof = enroll_proof(&RingCrypto, &secret, &self.id, &self.identity.ak_name).unwrap();
        self.send_proof(request_id, proof).await
    }

    pub fn nonce_request(&self, purpose: NoncePurpose) -> Vec<u8> {
        let mut buf = [0u8; 64];
        NonceRequest {
            v: Version::CURRENT,
            device: self.id.clone(),
            purpose,
        }
        .encode(&mut buf)
        .unwrap()
        .to_vec()
    }

    /// Asks for a nonce; `None` if none comes within `wait`.
    pub async fn nonce_within(
        &mut self,
        purpose: NoncePurpose,
        wait: Duration,
    ) -> Option<[u8; 32]> {
        self.send(DeviceTopic::NonceRequest, self.nonce_request(purpose))
            .await;
        let bytes = self.next(DeviceTopic::Nonce, wait).await?;
        let nonce = Nonce::decode(&bytes).unwrap();
        assert_eq!(nonce.purpose, purpose);
        assert!(nonce.expires_in_ms >= 1000);
        Some(nonce.nonce.0)
    }

    pub async fn nonce(&mut self) -> [u8; 32] {
        self.nonce_within(NoncePurpose::Renew, ANSWER)
            .await
            .expect("a nonce")
    }

    /// Evidence: a quote over `pcrs` with `nonce`, encoded for the wire.
    pub async fn evidence(&self, nonce: [u8; 32], pcrs: &[u8]) -> Vec<u8> {
        let selection = PcrSelection::sha256(pcrs).unwrap();
        let quote = self.tpm.quote(nonce.to_vec(), selection).await.unwrap();
        encode_evidence(&self.id, nonce, &quote)
    }

    /// Publishes `evidence` and waits for the answer on the artifact topic.
    pub async fn submit(&mut self, evidence: Vec<u8>) -> Answer {
        self.send(DeviceTopic::Evidence, evidence).await;
        let bytes = self
            .next(DeviceTopic::Artifact, ANSWER)
            .await
            .expect("an answer on the artifact topic");
        self.open_answer(&bytes)
    }

    pub fn open_answer(&self, bytes: &[u8]) -> Answer {
        match Claims::open(bytes, &self.keys, &RingCrypto) {
            Ok(claims) => {
                assert_eq!(claims.sub, self.id);
                Answer::Artifact(bytes.to_vec())
            }
            Err(ShimError::Envelope(EnvelopeError::WrongContentType { .. })) => {
                let refusal = Refusal::open(bytes, &self.keys, &RingCrypto).unwrap();
                assert_eq!(refusal.sub, self.id);
                Answer::Refusal(Box::new(refusal))
            }
            Err(e) => panic!("neither artifact nor refusal: {e}"),
        }
    }

    /// Nonce, quote over the locker PCRs, answer.
    pub async fn attest(&mut self) -> ([u8; 32], Answer) {
        self.attest_pcrs(&[0, 7]).await
    }

    /// Nonce, quote over `pcrs`, answer.
    pub async fn attest_pcrs(&mut self, pcrs: &[u8]) -> ([u8; 32], Answer) {
        let nonce = self.nonce().await;
        let evidence = self.evidence(nonce, pcrs).await;
        (nonce, self.submit(evidence).await)
    }
}

pub fn encode_evidence(id: &DeviceId, nonce: [u8; 32], quote: &mctc_attest::Evidence) -> Vec<u8> {
    let values: Vec<Bytes<32>> = quote
        .pcrs
        .values()
        .iter()
        .map(|v| Bytes(<[u8; 32]>::try_from(v.as_slice()).unwrap()))
        .collect();
    let evidence = Evidence {
        v: Version::CURRENT,
        device: id.clone(),
        nonce: Bytes(nonce),
        attest: Bstr(&quote.attest),
        signature: Bstr(&quote.signature),
        pcr_alg: 0x000b,
        pcr_mask: quote.pcrs.selection().mask(),
        pcr_values: List::from_slice(&values).unwrap(),
    };
    let mut buf = vec![0u8; 4096];
    evidence.encode(&mut buf).unwrap().to_vec()
}

pub fn rand_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut out).unwrap();
    out
}

/// Polls `f` until it returns true or `ANSWER` passes.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    assert!(wait_until(ANSWER, &mut f).is_some(), "timed out: {what}");
}

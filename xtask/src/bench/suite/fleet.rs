//! `fleet_devices`, `fleet_attest_p99_ms`: simulated devices against the
//! real authority and collector (release binaries) through a real
//! Mosquitto (TLS 1.3, client certificates, the shipped ACL).
//!
//! Each simulated device is what an agent is to the fleet side, minus the
//! TPM: its own broker identity and MQTT session, a software AK
//! (`soft_tpm`) enrolled in the authority's database, nonce → evidence →
//! artifact verified with the shim, renewal at half the 60 s ttl ± 10 %
//! quoting the artifact's `next_nonce`, every heartbeat verified, and its
//! lineage (attestations, installs, a checkpoint quoted by its AK)
//! forwarded to the collector. The fleet grows step by step; at each size
//! the renewals started in a measurement window give the p99 from the
//! start of a renewal (quote) to its artifact verified on the device.
//! `fleet_devices` is the largest size whose p99 stayed under 1 s.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mctc_authority::now::Now;
use mctc_authority::store::sqlite::SqliteStore;
use mctc_authority::store::{EnrollCommit, NewDevice, PendingEnrollment, Store};
use mctc_shim::artifact::{VerifyContext, verify_artifact};
use mctc_shim::crypto::nonce_hash;
use mctc_shim::gate::{verify_heartbeat, verify_refusal};
use mctc_shim::limits::MAX_SMALL_MESSAGE_LEN;
use mctc_shim::lineage::{
    AgentStart, ArtifactInstalled, AttestVerdict, Attested, Body, GateOpened,
};
use mctc_shim::messages::{Nonce, NoncePurpose, NonceRequest};
use mctc_shim::topics::{DeviceTopic, HEARTBEAT};
use mctc_shim::tpm::BootCounters;
use mctc_shim::wire::{Bytes, Token, Version};
use mctc_shim::{AuthorityKey, DeviceId, Message, RingCrypto};
use mctc_tests::fleet::{AUTHORITY_ID, Fleet};
use ring::rand::{SecureRandom, SystemRandom};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeFilter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::chain::{SimChain, batches};
use crate::report::Figures;
use crate::soft_tpm::{self, SoftTpm};
use crate::stats::Samples;

/// The artifact lifetime.
const TTL_MS: u64 = 60_000;
/// The shipped example's heartbeat window (a heartbeat every 10 s).
const HB_MS: u64 = 30_000;
/// The agent's default answer timeout before it asks for a new nonce.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Devices connecting and attesting for the first time at once (a real
/// fleet does not boot in one instant; the authority's queue is 1024).
const STARTING_AT_ONCE: usize = 48;
/// The agent's default MQTT keep-alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// The p99 a fleet size must stay under.
const P99_LIMIT_MS: f64 = 1000.0;

/// Sizes to try and how long to watch each.
#[derive(Debug, Clone)]
pub struct Plan {
    pub sizes: Vec<usize>,
    pub window: Duration,
}

impl Plan {
    pub fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                sizes: vec![250, 1000],
                window: Duration::from_secs(15),
            }
        } else {
            // 16 000 keeps the broker's and this process's descriptors
            // under the 20 000 limit of this machine.
            Plan {
                sizes: vec![250, 500, 1000, 2000, 4000, 8000, 12_000, 16_000],
                window: Duration::from_secs(27),
            }
        }
    }
}

/// What every simulated device reports to.
struct Shared {
    keys: Vec<AuthorityKey>,
    /// Renewals: (started, milliseconds to the verified artifact or to
    /// giving up, succeeded).
    renewals: Mutex<Vec<(Instant, f64, bool)>>,
    /// Renewals under way: device index → start.
    inflight: Mutex<HashMap<usize, Instant>>,
    /// First attestations.
    initial: Mutex<Samples>,
    up: AtomicUsize,
    heartbeats: AtomicU64,
    acks: AtomicU64,
    refusals: AtomicU64,
    link_errors: AtomicU64,
    rng: SystemRandom,
}

impl Shared {
    fn uniform(&self, from: Duration, to: Duration) -> Duration {
        let mut bytes = [0u8; 8];
        let _ = self.rng.fill(&mut bytes);
        let span = to.saturating_sub(from).as_millis().max(1) as u64;
        from + Duration::from_millis(u64::from_le_bytes(bytes) % span)
    }

    fn outcome(&self, index: usize, started: Instant, ok: bool) {
        if let Ok(mut inflight) = self.inflight.lock() {
            inflight.remove(&index);
        }
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if let Ok(mut renewals) = self.renewals.lock() {
            renewals.push((started, ms, ok));
        }
    }
}

struct Topics {
    nonce_req: String,
    evidence: String,
    lineage: String,
    nonce: String,
    artifact: String,
    ack: String,
}

impl Topics {
    fn of(id: &DeviceId) -> Topics {
        let t = |which: DeviceTopic| which.topic(id).to_string();
        Topics {
            nonce_req: t(DeviceTopic::NonceRequest),
            evidence: t(DeviceTopic::Evidence),
            lineage: t(DeviceTopic::Lineage),
            nonce: t(DeviceTopic::Nonce),
            artifact: t(DeviceTopic::Artifact),
            ack: t(DeviceTopic::LineageAck),
        }
    }
}

enum Phase {
    /// Waiting for the session and subscriptions.
    Connecting,
    /// A nonce was requested at `asked`.
    AwaitNonce { asked: Instant },
    /// Evidence for `nonce` was sent.
    AwaitArtifact { nonce: [u8; 32], asked: Instant },
    /// An artifact is installed; renew at `renew_at` with `next_nonce`.
    Holding {
        next_nonce: [u8; 32],
        renew_at: Instant,
    },
}

struct SimDevice {
    index: usize,
    id: DeviceId,
    tpm: SoftTpm,
    chain: SimChain,
    topics: Topics,
    unsent: Vec<Vec<u8>>,
    client: AsyncClient,
    phase: Phase,
    /// The measured renewal under way (None: the first attestation, or
    /// a recovery after a failed renewal).
    renewal: Option<Instant>,
    first: bool,
    /// When the first nonce was asked for (the first attestation's start).
    born: Option<Instant>,
    starting: Option<OwnedSemaphorePermit>,
    shared: Arc<Shared>,
}

impl SimDevice {
    fn subscribe(&self) {
        let filters = [&self.topics.nonce, &self.topics.artifact, &self.topics.ack]
            .into_iter()
            .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce))
            .chain([SubscribeFilter::new(HEARTBEAT.to_owned(), QoS::AtMostOnce)]);
        let _ = self.client.try_subscribe_many(filters);
    }

    fn publish(&self, topic: &str, payload: Vec<u8>) -> bool {
        self.client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
            .is_ok()
    }

    fn request_nonce(&mut self) {
        let request = NonceRequest {
            v: Version::default(),
            device: self.id.clone(),
            purpose: NoncePurpose::Renew,
        };
        let mut buf = [0u8; MAX_SMALL_MESSAGE_LEN];
        if let Ok(bytes) = request.encode(&mut buf) {
            let bytes = bytes.to_vec();
            self.publish(&self.topics.nonce_req.clone(), bytes);
        }
        self.phase = Phase::AwaitNonce {
            asked: Instant::now(),
        };
    }

    fn send_evidence(&mut self, nonce: [u8; 32]) {
        match soft_tpm::evidence(&self.tpm, &self.id, &nonce) {
            Ok(evidence) => {
                self.publish(&self.topics.evidence.clone(), evidence);
                self.phase = Phase::AwaitArtifact {
                    nonce,
                    asked: Instant::now(),
                };
            }
            Err(_) => self.request_nonce(),
        }
    }

    fn renew(&mut self, next_nonce: [u8; 32]) {
        let now = Instant::now();
        self.renewal = Some(now);
        if let Ok(mut inflight) = self.shared.inflight.lock() {
            inflight.insert(self.index, now);
        }
        self.send_evidence(next_nonce);
    }

    /// A renewal (or first attestation) did not end in an artifact.
    fn failed(&mut self) {
        if let Some(started) = self.renewal.take() {
            self.shared.outcome(self.index, started, false);
        }
        self.request_nonce();
    }

    fn on_timer(&mut self) {
        match self.phase {
            Phase::Holding { next_nonce, .. } => self.renew(next_nonce),
            Phase::AwaitNonce { .. } | Phase::AwaitArtifact { .. } => self.failed(),
            Phase::Connecting => {}
        }
    }

    fn timer(&self) -> Option<Instant> {
        match self.phase {
            Phase::Connecting => None,
            Phase::AwaitNonce { asked } | Phase::AwaitArtifact { asked, .. } => {
                Some(asked + ANSWER_TIMEOUT)
            }
            Phase::Holding { renew_at, .. } => Some(renew_at),
        }
    }

    fn on_nonce(&mut self, payload: &[u8]) {
        if !matches!(self.phase, Phase::AwaitNonce { .. }) {
            return;
        }
        if let Ok(nonce) = Nonce::decode(payload) {
            self.send_evidence(nonce.nonce.0);
        }
    }

    fn on_artifact(&mut self, payload: &[u8]) {
        let Phase::AwaitArtifact { nonce, .. } = self.phase else {
            return;
        };
        let (reset, restart) = self.tpm.boot();
        let context = VerifyContext {
            device: &self.id,
            issuer: AUTHORITY_ID,
            keys: &self.shared.keys,
            nonce: &nonce,
            boot: BootCounters { reset, restart },
            received_ms: mctc_service::clock::boottime_ms(),
            wall_ms: None,
        };
        let artifact = match verify_artifact(payload, &context, &RingCrypto) {
            Ok(artifact) => artifact,
            Err(_) => {
                if verify_refusal(payload, &self.shared.keys, &RingCrypto, &self.id, &nonce).is_ok()
                {
                    self.shared.refusals.fetch_add(1, Ordering::Relaxed);
                    self.failed();
                }
                return;
            }
        };
        let now = Instant::now();
        if let Some(started) = self.renewal.take() {
            self.shared.outcome(self.index, started, true);
        }
        // Renewal at half-life ± 10 %; the first one anywhere in the
        // first half-life, so the fleet's renewals spread evenly.
        let half = Duration::from_millis(TTL_MS / 2);
        let wait = if self.first {
            self.shared.uniform(Duration::ZERO, half)
        } else {
            self.shared.uniform(half * 9 / 10, half * 11 / 10)
        };
        let first = std::mem::take(&mut self.first);
        self.phase = Phase::Holding {
            next_nonce: *artifact.next_nonce(),
            renew_at: now + wait,
        };
        let cti = Bytes(*artifact.cti());
        let attested = Body::Attested(Attested {
            nonce_hash: Bytes(nonce_hash(&RingCrypto, &nonce)),
            verdict: AttestVerdict::Affirmed,
            refusal: None,
            cti: Some(cti),
        });
        let mut records = vec![self.chain.append(attested, 1)];
        if first {
            if let (Some(born), Ok(mut initial)) = (self.born, self.shared.initial.lock()) {
                initial.push(now.duration_since(born));
            }
            records.push(self.chain.append(
                Body::GateOpened(GateOpened {
                    cti,
                    deadline_ms: artifact.deadline_ms(),
                }),
                0,
            ));
            records.push(self.chain.checkpoint(&self.tpm));
            self.shared.up.fetch_add(1, Ordering::Relaxed);
            self.starting = None;
        } else {
            records.push(self.chain.append(
                Body::ArtifactInstalled(ArtifactInstalled {
                    cti,
                    deadline_ms: artifact.deadline_ms(),
                    exp: artifact.exp(),
                }),
                0,
            ));
        }
        self.unsent.extend(records.into_iter().flatten());
        self.forward();
    }

    fn forward(&mut self) {
        if self.unsent.is_empty() {
            return;
        }
        let Ok(payloads) = batches(&self.id, &self.unsent) else {
            return;
        };
        let mut sent = 0;
        for payload in payloads {
            if !self.publish(&self.topics.lineage.clone(), payload) {
                break;
            }
            sent += 64;
        }
        self.unsent.drain(..sent.min(self.unsent.len()));
    }

    fn on_publish(&mut self, topic: &str, payload: &[u8]) {
        if topic == self.topics.artifact {
            self.on_artifact(payload);
        } else if topic == self.topics.nonce {
            self.on_nonce(payload);
        } else if topic == HEARTBEAT {
            if verify_heartbeat(payload, &self.shared.keys, &RingCrypto).is_ok() {
                self.shared.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
        } else if topic == self.topics.ack {
            self.shared.acks.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn run(mut self, mut eventloop: EventLoop, starting: Arc<Semaphore>) {
        // Devices come up a few at a time: connect, subscribe, attest.
        self.starting = starting.acquire_owned().await.ok();
        loop {
            let timer = self.timer();
            let sleep = async {
                match timer {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                event = eventloop.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => self.subscribe(),
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if matches!(self.phase, Phase::Connecting) {
                            self.born = Some(Instant::now());
                            self.request_nonce();
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => self.on_publish(&p.topic, &p.payload),
                    Ok(_) => {}
                    Err(_) => {
                        self.shared.link_errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
                () = sleep => self.on_timer(),
            }
        }
    }
}

/// Registers and enrolls `id` with `tpm`'s AK directly in the authority's
/// database (what `devices add` and a credential activation leave there).
fn enroll(store: &mut SqliteStore, id: &DeviceId, tpm: &SoftTpm) -> Result<(), String> {
    let now = Now::read().map_err(|e| e.to_string())?;
    store
        .add_device(
            &NewDevice {
                id: id.clone(),
                class: "sim".into(),
                pinned_ek_sha256: None,
            },
            &now,
        )
        .map_err(|e| e.to_string())?;
    let pending = PendingEnrollment {
        device: id.clone(),
        request_id: [0; 16],
        class: "sim".into(),
        first_use: false,
        proof: [0; 32],
        ek_public: tpm.ek_public().to_vec(),
        ek_sha256: tpm.ek_sha256(),
        ak_public: tpm.ak_public().to_vec(),
        ak_name: tpm.ak_name().to_vec(),
        deadline: now.after(60_000),
    };
    match store.commit_enrollment(&pending, &now) {
        Ok(EnrollCommit::Enrolled) => Ok(()),
        other => Err(format!(
            "enrolling {id} in the authority's database: {other:?}"
        )),
    }
}

struct Step {
    size: usize,
    p99: Option<f64>,
    samples: usize,
    failed: usize,
    setup_s: f64,
}

/// The renewals started in `[from, until)`: finished ones with their
/// latency; ones still under way count as late as they are now.
fn window_samples(shared: &Shared, from: Instant, until: Instant) -> (Samples, usize) {
    let mut samples = Samples::new();
    let mut failed = 0;
    if let Ok(renewals) = shared.renewals.lock() {
        for (started, ms, ok) in renewals.iter() {
            if *started >= from && *started < until {
                samples.push_ms(*ms);
                if !ok {
                    failed += 1;
                }
            }
        }
    }
    if let Ok(inflight) = shared.inflight.lock() {
        for started in inflight.values() {
            if *started >= from && *started < until {
                samples.push(started.elapsed());
                failed += 1;
            }
        }
    }
    (samples, failed)
}

fn device_options(fleet: &Fleet, id: &str) -> Result<MqttOptions, String> {
    let identity = fleet.broker.identity(id).map_err(|e| e.to_string())?;
    let mut options = fleet
        .broker
        .mqtt_options(id, &identity)
        .map_err(|e| e.to_string())?;
    options.set_keep_alive(KEEP_ALIVE);
    options.set_max_packet_size(1 << 16, 1 << 17);
    options.set_request_channel_capacity(16);
    Ok(options)
}

pub fn measure(figures: &mut Figures, plan: &Plan) -> Result<(), String> {
    let policy = crate::authority::bench_class("sim", TTL_MS, HB_MS);
    let mut fleet = Fleet::with_policy(&policy);
    // Every simulated device's broker role, written before the broker
    // serves anyone (granting thousands one by one would measure the
    // broker's dynamic-security file rewrites, not the fleet).
    let names: Vec<String> = (0..plan.sizes.iter().copied().max().unwrap_or(0))
        .map(|index| format!("sim-{index:05}"))
        .collect();
    fleet
        .broker
        .preseed_devices(&names)
        .map_err(|e| e.to_string())?;
    fleet.start_authority();
    fleet.start_collector();
    let authority_key = mctc_service::keys::read_public_key(Path::new(&fleet.authority_pub))
        .map_err(|e| e.to_string())?;
    let shared = Arc::new(Shared {
        keys: vec![AuthorityKey::new(&RingCrypto, authority_key)],
        renewals: Mutex::new(Vec::new()),
        inflight: Mutex::new(HashMap::new()),
        initial: Mutex::new(Samples::new()),
        up: AtomicUsize::new(0),
        heartbeats: AtomicU64::new(0),
        acks: AtomicU64::new(0),
        refusals: AtomicU64::new(0),
        link_errors: AtomicU64::new(0),
        rng: SystemRandom::new(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let starting = Arc::new(Semaphore::new(STARTING_AT_ONCE));
    let mut store =
        SqliteStore::open(&fleet.dir.path().join("authority.db")).map_err(|e| e.to_string())?;
    let mut steps: Vec<Step> = Vec::new();
    let mut spawned = 0usize;
    let result = (|| {
        for &size in &plan.sizes {
            let setup = Instant::now();
            for index in spawned..size {
                let name = format!("sim-{index:05}");
                let id = DeviceId::new(&name).map_err(|e| e.to_string())?;
                let tpm = SoftTpm::generate()?;
                enroll(&mut store, &id, &tpm)?;
                let options = device_options(&fleet, &name)?;
                let (client, eventloop) = AsyncClient::new(options, 16);
                let mut chain = SimChain::genesis(id.clone(), &tpm);
                let start = chain.append(
                    Body::AgentStart(AgentStart {
                        sw_version: Token("bench-sim"),
                    }),
                    0,
                )?;
                let device = SimDevice {
                    index,
                    topics: Topics::of(&id),
                    id,
                    tpm,
                    chain,
                    unsent: vec![start],
                    client,
                    phase: Phase::Connecting,
                    renewal: None,
                    first: true,
                    born: None,
                    starting: None,
                    shared: Arc::clone(&shared),
                };
                runtime.spawn(device.run(eventloop, Arc::clone(&starting)));
            }
            spawned = size;
            // Every device up: connected and holding its first artifact.
            let patience = Duration::from_secs(60) + Duration::from_millis(20 * size as u64);
            let waited = Instant::now();
            while shared.up.load(Ordering::Relaxed) < size {
                if waited.elapsed() > patience {
                    return Err(format!(
                        "only {} of {size} devices attested within {:.0} s",
                        shared.up.load(Ordering::Relaxed),
                        patience.as_secs_f64()
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let setup_s = setup.elapsed().as_secs_f64();
            let from = Instant::now();
            std::thread::sleep(plan.window);
            let until = Instant::now();
            // Renewals started near the end of the window finish, or
            // are counted as late as they are.
            std::thread::sleep(Duration::from_millis(1500));
            let (samples, failed) = window_samples(&shared, from, until);
            let p99 = samples.p99();
            println!(
                "    fleet {size}: {} renewals, {failed} failed, {} (setup {setup_s:.0} s)",
                samples.len(),
                samples.summary()
            );
            steps.push(Step {
                size,
                p99,
                samples: samples.len(),
                failed,
                setup_s,
            });
            if p99.is_none_or(|p| p >= P99_LIMIT_MS) {
                break;
            }
        }
        Ok::<(), String>(())
    })();
    runtime.shutdown_background();
    let passing = steps
        .iter()
        .rfind(|s| s.p99.is_some_and(|p| p < P99_LIMIT_MS) && s.samples > 0);
    let ladder = steps
        .iter()
        .map(|s| {
            format!(
                "{}: p99 {} ms over {} renewals ({} failed, setup {:.0} s)",
                s.size,
                s.p99.map_or("—".to_owned(), |p| format!("{p:.0}")),
                s.samples,
                s.failed,
                s.setup_s
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    if let Some(step) = passing {
        figures.set("fleet_devices", step.size as f64);
        if let Some(p99) = step.p99 {
            figures.set("fleet_attest_p99_ms", p99);
        }
    } else if let Some(first) = steps.first() {
        figures.set("fleet_devices", 0.0);
        if let Some(p99) = first.p99 {
            figures.set("fleet_attest_p99_ms", p99);
        }
    }
    if let Some(last) = steps.last() {
        figures.set("fleet_largest_tried", last.size as f64);
    }
    let initial = shared
        .initial
        .lock()
        .map(|s| s.summary())
        .unwrap_or_default();
    figures.note(
        "fleet_devices",
        format!(
            "ttl 60 s, renewal at 30 s ± 10 %, heartbeat every 10 s; {ladder}; first attestations {initial}; {} heartbeats verified, {} lineage acks, {} refusals, {} link errors",
            shared.heartbeats.load(Ordering::Relaxed),
            shared.acks.load(Ordering::Relaxed),
            shared.refusals.load(Ordering::Relaxed),
            shared.link_errors.load(Ordering::Relaxed),
        ),
    );
    result
}

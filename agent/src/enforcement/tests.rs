//! The enforcement task with paused tokio time: deadlines to the
//! millisecond, renewal timing, heartbeats, containment and refusals. No
//! real process is involved here (the end-to-end tests in `tests/` use the
//! real authority, swtpm and Mosquitto); the authority's messages are
//! signed with a test key, the TPM is a stand-in that echoes the nonce it
//! quoted (or fails as told), and the lineage writer is a fake whose health
//! the test sets: no thread runs beside the runtime, so paused time moves
//! only when the enforcement task and the test both wait.

use std::sync::Arc;

use mctc_shim::messages::{
    Control, ControlAction, Heartbeat, Nonce, NoncePurpose, NonceRequest, Refusal, RefusalCode,
};
use mctc_shim::tpm::BootCounters;
use mctc_shim::wire::{Bytes, List, Message, Text, Version};
use mctc_shim::{AuthorityKey, DeviceId, RingCrypto, RingSigner, Signed, Signer};
use tokio::sync::mpsc::UnboundedReceiver;

use super::*;
use crate::lineage::writer;
use crate::lineage::writer::LineageStatus;

const T0: u64 = 1_000_000;

#[derive(Debug)]
struct PausedClock {
    start: tokio::time::Instant,
    /// CLOCK_BOOTTIME moved on while no task ran (a suspended process).
    suspended_ms: std::sync::atomic::AtomicU64,
    /// CLOCK_BOOTTIME went back (a broken clock).
    rewound_ms: std::sync::atomic::AtomicU64,
}

impl Clock for PausedClock {
    fn now_ms(&self) -> u64 {
        T0 + u64::try_from(self.start.elapsed().as_millis()).unwrap()
            + self.suspended_ms.load(std::sync::atomic::Ordering::Acquire)
            - self.rewound_ms.load(std::sync::atomic::Ordering::Acquire)
    }

    fn wall_ms(&self) -> Option<u64> {
        None
    }

    fn wall_display_ms(&self) -> u64 {
        WALL_T0 + u64::try_from(self.start.elapsed().as_millis()).unwrap()
    }
}

/// The (untrusted) wall clock at the start of a test.
const WALL_T0: u64 = 1_700_000_000_000;

/// Echoes the quoted nonce as the "attest" bytes, so tests see which nonce
/// was quoted. `failures`: errors the next quotes return, in order.
#[derive(Debug, Clone, Default)]
struct EchoTpm {
    failures: Arc<std::sync::Mutex<std::collections::VecDeque<PlatformError>>>,
}

impl Platform for EchoTpm {
    async fn quote(
        &self,
        qualifying_data: [u8; 32],
        selection: mctc_shim::tpm::PcrSelection,
    ) -> Result<Quote, PlatformError> {
        if let Some(e) = self.failures.lock().unwrap().pop_front() {
            return Err(e);
        }
        Ok(Quote {
            attest: qualifying_data.to_vec(),
            signature: vec![1],
            pcr_values: vec![[0; 32]; selection.count()],
            boot: BootCounters::default(),
        })
    }

    async fn observe(
        &self,
        _selection: mctc_shim::tpm::PcrSelection,
    ) -> Result<crate::platform::Observation, PlatformError> {
        unreachable!("the enforcement task does not read PCRs")
    }

    async fn extend(&self, _pcr: u8, _digest: [u8; 32]) -> Result<(), PlatformError> {
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct Recorder(tokio::sync::mpsc::UnboundedSender<(String, Vec<u8>)>);

impl Outbox for Recorder {
    fn try_publish(&self, topic: &str, payload: Vec<u8>, _qos: QoS, _retain: bool) -> bool {
        self.0.send((topic.to_owned(), payload)).is_ok()
    }

    async fn publish(&self, topic: &str, payload: Vec<u8>, qos: QoS, retain: bool) -> bool {
        self.try_publish(topic, payload, qos, retain)
    }
}

/// The fake lineage writer's command queue (never served).
type FakeQueue = Arc<std::sync::Mutex<std::sync::mpsc::Receiver<writer::Command>>>;

struct Harness {
    inbox: mpsc::Sender<Input>,
    published: UnboundedReceiver<(String, Vec<u8>)>,
    signer: RingSigner,
    clock: Arc<PausedClock>,
    device: DeviceId,
    control_seq: u64,
    hb_seq: u64,
    tpm: EchoTpm,
    /// The fake writer's queue and health, kept so the enforcement task
    /// does not see the writer gone.
    _lineage: Option<(FakeQueue, watch::Sender<LineageStatus>)>,
    _dir: tempfile::TempDir,
}

fn settings() -> Settings {
    Settings {
        issuer: "fleet-authority".into(),
        answer_timeout_ms: 2_000,
        retry_min_ms: 1_000,
        retry_max_ms: 8_000,
        status_interval_ms: 3_600_000,
        fresh_timeout_ms: 15_000,
        max_fresh_age_ms: 10_000,
        pcrs: mctc_shim::tpm::PcrSelection::sha256(1),
        version: "test",
        watchdog: None,
        enrolled: true,
        cert_not_after_ms: None,
    }
}

fn paused_clock() -> Arc<PausedClock> {
    Arc::new(PausedClock {
        start: tokio::time::Instant::now(),
        suspended_ms: std::sync::atomic::AtomicU64::new(0),
        rewound_ms: std::sync::atomic::AtomicU64::new(0),
    })
}

impl Harness {
    /// With a fake lineage writer (healthy; records queued, never
    /// answered): nothing but the enforcement task and the test runs, so
    /// paused time moves only when both wait.
    async fn start() -> Harness {
        Harness::start_with_fake_lineage().await.0
    }

    /// With a fake lineage writer whose health the test sets.
    async fn start_with_fake_lineage() -> (Harness, FakeQueue, watch::Sender<LineageStatus>) {
        let dir = tempfile::tempdir().unwrap();
        let device = DeviceId::new("d1").unwrap();
        let (lineage, commands, health) = LineageHandle::fake();
        let commands = Arc::new(std::sync::Mutex::new(commands));
        let mut h = Harness::start_on(dir, device, paused_clock(), lineage).await;
        h._lineage = Some((Arc::clone(&commands), health.clone()));
        (h, commands, health)
    }

    async fn start_on(
        dir: tempfile::TempDir,
        device: DeviceId,
        clock: Arc<PausedClock>,
        lineage: LineageHandle,
    ) -> Harness {
        let signer = RingSigner::from_seed(&[9; 32]).unwrap();
        let (tx, published) = tokio::sync::mpsc::unbounded_channel();
        let (inbox, inbox_rx) = mpsc::channel(64);
        let (baseline, _) = watch::channel(None);
        let (_forward_tx, forward) = watch::channel(ForwardStatus::default());
        let tpm = EchoTpm::default();
        let enforcer = Enforcer::new(
            settings(),
            Parts {
                device: device.clone(),
                keys: vec![AuthorityKey::new(&RingCrypto, signer.public_key())],
                revoked: false,
                control_seq: None,
                clock: clock.clone(),
                boot: CurrentBoot::default(),
                platform: tpm.clone(),
                outbox: Recorder(tx),
                lineage: lineage.clone(),
                forward,
                state: StateDir::open(&dir.path().join("state")).unwrap(),
                inbox: inbox.clone(),
                baseline,
            },
            None,
        );
        tokio::spawn(enforcer.run(inbox_rx));
        inbox.send(Input::Connected { session: 1 }).await.unwrap();
        Harness {
            inbox,
            published,
            signer,
            clock,
            device,
            control_seq: 0,
            hb_seq: 0,
            tpm,
            _lineage: None,
            _dir: dir,
        }
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The agent is suspended for `ms`: its clock jumps, no timer fires.
    fn suspend(&self, ms: u64) {
        self.clock
            .suspended_ms
            .fetch_add(ms, std::sync::atomic::Ordering::AcqRel);
    }

    /// The next publish on a topic ending in `suffix` (status publishes
    /// skipped). Paused time advances by itself to whenever it comes.
    async fn next(&mut self, suffix: &str) -> Vec<u8> {
        loop {
            let (topic, payload) = self.published.recv().await.unwrap();
            if topic.ends_with(suffix) {
                return payload;
            }
            assert!(topic.ends_with("/status"), "unexpected publish on {topic}");
        }
    }

    /// Delivers a message and waits until the task has handled it (so a
    /// following `advance` cannot overtake it).
    async fn send(&self, kind: Inbound, payload: Vec<u8>) {
        self.inbox
            .send(Input::Message {
                kind,
                payload,
                received_ms: self.now(),
            })
            .await
            .unwrap();
        let _ = self.status().await;
    }

    /// Answers the next nonce request; returns the nonce.
    async fn give_nonce(&mut self, nonce: [u8; 32]) -> NoncePurpose {
        let request = self.next("/nonce/req").await;
        let purpose = NonceRequest::decode(&request).unwrap().purpose;
        self.give_nonce_now(nonce, purpose).await;
        purpose
    }

    /// Delivers a nonce for `purpose` that was asked for earlier.
    async fn give_nonce_now(&mut self, nonce: [u8; 32], purpose: NoncePurpose) {
        let mut buf = [0u8; 256];
        let bytes = Nonce {
            v: Version::CURRENT,
            nonce: Bytes(nonce),
            purpose,
            expires_in_ms: 10_000,
            pcr_alg: mctc_shim::tpm::TPM_ALG_SHA256,
            pcr_mask: 1,
        }
        .encode(&mut buf)
        .unwrap()
        .to_vec();
        self.send(Inbound::Nonce, bytes).await;
    }

    /// The nonce quoted in the next evidence.
    async fn evidence(&mut self) -> [u8; 32] {
        let bytes = self.next("/evidence").await;
        let evidence = mctc_shim::messages::Evidence::decode(&bytes).unwrap();
        assert_eq!(
            evidence.attest.0,
            evidence.nonce.0.as_slice(),
            "quoted the sent nonce"
        );
        evidence.nonce.0
    }

    fn artifact(&self, nonce: [u8; 32], next_nonce: [u8; 32], ttl_ms: u32, cti: u8) -> Vec<u8> {
        super::fixtures::artifact(
            &self.signer,
            &self.device,
            [cti; 16],
            nonce,
            next_nonce,
            ttl_ms,
        )
    }

    fn refusal(&self, nonce: [u8; 32], reason: RefusalCode, contained: bool) -> Vec<u8> {
        let mut buf = [0u8; 2048];
        Refusal {
            v: Version::CURRENT,
            sub: self.device.clone(),
            nonce: Bytes(nonce),
            reason,
            contained,
            iat: 1,
            pcrs: None,
        }
        .sign(&self.signer, &RingCrypto, &mut buf)
        .unwrap()
        .to_vec()
    }

    async fn control(&mut self, action: ControlAction) {
        self.control_seq += 1;
        let mut buf = [0u8; 2048];
        let bytes = Control {
            v: Version::CURRENT,
            sub: self.device.clone(),
            seq: self.control_seq,
            action,
            reason: Text("test"),
            iat: 1,
        }
        .sign(&self.signer, &RingCrypto, &mut buf)
        .unwrap()
        .to_vec();
        self.send(Inbound::Control, bytes).await;
    }

    async fn heartbeat(&mut self, revoked: &[&str]) {
        self.heartbeat_with(revoked, 0, 0, 30_000).await;
    }

    async fn heartbeat_with(&mut self, revoked: &[&str], epoch: u64, since_epoch: u64, hb_ms: u32) {
        self.hb_seq += 1;
        let mut list = List::new();
        for id in revoked {
            list.push(DeviceId::new(id).unwrap()).unwrap();
        }
        let mut buf = [0u8; 2048];
        let bytes = Heartbeat {
            v: Version::CURRENT,
            seq: self.hb_seq,
            epoch,
            since_epoch,
            iat: 1,
            hb_ms,
            revoked: list,
        }
        .sign(&self.signer, &RingCrypto, &mut buf)
        .unwrap()
        .to_vec();
        self.send(Inbound::Heartbeat, bytes).await;
    }

    /// A full first round: the gate opens with a `ttl_ms` artifact.
    async fn open(&mut self, ttl_ms: u32) -> [u8; 32] {
        assert_eq!(self.give_nonce([1; 32]).await, NoncePurpose::Renew);
        let nonce = self.evidence().await;
        assert_eq!(nonce, [1; 32]);
        let next = [2; 32];
        self.send(Inbound::Artifact, self.artifact(nonce, next, ttl_ms, 0xa1))
            .await;
        assert_eq!(self.state().await, "open");
        next
    }

    async fn authorize(&self, op: &str) -> Pending {
        let (reply, pending) = oneshot::channel();
        self.inbox
            .send(Input::Authorize {
                request: AuthorizeRequest {
                    op: op.into(),
                    amount: None,
                    currency: None,
                    reference: None,
                },
                reply,
            })
            .await
            .unwrap();
        pending.await.unwrap()
    }

    async fn status(&self) -> serde_json::Value {
        let (reply, status) = oneshot::channel();
        self.inbox.send(Input::Status { reply }).await.unwrap();
        serde_json::to_value(status.await.unwrap()).unwrap()
    }

    async fn state(&self) -> String {
        self.status().await["state"].as_str().unwrap().to_owned()
    }
}

#[tokio::test(start_paused = true)]
async fn the_gate_closes_exactly_at_the_artifact_deadline() {
    let mut h = Harness::start().await;
    // Start is always closed.
    assert_eq!(h.authorize("unlock").await.reason, Some(DenyCode::Closed));
    h.open(10_000).await;
    let deadline = h.status().await["artifact"]["expires_in_ms"]
        .as_u64()
        .unwrap();

    assert_eq!(deadline, 10_000, "ttl counted from receipt");
    // Keep the renewal from answering: the artifact simply runs out.
    tokio::time::advance(Duration::from_millis(9_999)).await;
    assert!(
        h.authorize("unlock").await.permit,
        "open 1 ms before the deadline"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    let at_deadline = h.authorize("unlock").await;
    assert!(!at_deadline.permit, "closed at the deadline itself");
    assert_eq!(at_deadline.reason, Some(DenyCode::Closed));
    assert_eq!(h.status().await["reason"], "artifact-expired");
}

#[tokio::test(start_paused = true)]
async fn a_status_asked_past_the_deadline_says_closed_before_any_timer_fires() {
    let mut h = Harness::start().await;
    h.open(10_000).await;
    assert_eq!(h.state().await, "open");
    // The clock passes the deadline while no timer runs (the status request
    // is handled first): the status is the gate as of now, not as of the
    // last timer.
    h.suspend(10_000);
    let status = h.status().await;
    assert_eq!(status["state"], "closed", "{status}");
    assert_eq!(status["reason"], "artifact-expired");
}

#[tokio::test(start_paused = true)]
async fn renewal_comes_at_half_life_within_jitter_and_quotes_next_nonce() {
    let mut h = Harness::start().await;
    let opened_at = h.now();
    let next = h.open(20_000).await;
    // No nonce request: the renewal quotes the artifact's next_nonce.
    let quoted = h.evidence().await;
    let at = h.now() - opened_at;
    assert_eq!(quoted, next);
    assert!(
        (9_000..=11_000).contains(&at),
        "renewal after {at} ms, ttl 20 s"
    );
    h.send(Inbound::Artifact, h.artifact(quoted, [3; 32], 20_000, 0xa2))
        .await;
    let status = h.status().await;
    assert_eq!(status["artifact"]["cti"], hex::encode([0xa2; 16]));
    assert_eq!(status["state"], "open");
}

#[tokio::test(start_paused = true)]
async fn an_answer_that_waited_while_the_agent_was_suspended_does_not_reopen_the_gate() {
    let mut h = Harness::start().await;
    h.open(10_000).await;
    let in_flight = h.evidence().await;
    // Suspended (SIGSTOP) beyond the ttl right after sending the renewal
    // evidence; the authority's answer waited in the socket and is the
    // first thing handled on resume, before any timer.
    h.suspend(15_000);
    h.send(
        Inbound::Artifact,
        h.artifact(in_flight, [7; 32], 10_000, 0xc1),
    )
    .await;
    let answer = h.authorize("unlock").await;
    assert!(
        !answer.permit,
        "a permit on evidence quoted 15 s ago, ttl 10 s"
    );
    let status = h.status().await;
    assert_eq!(status["state"], "closed");
    assert_eq!(status["reason"], "artifact-expired");
    assert_eq!(status["last_attestation"]["verdict"], "no-answer");
    // Recovery: a new round with a requested nonce reopens.
    h.give_nonce([8; 32]).await;
    let fresh = h.evidence().await;
    h.send(Inbound::Artifact, h.artifact(fresh, [9; 32], 10_000, 0xc2))
        .await;
    assert!(h.authorize("unlock").await.permit);
}

#[tokio::test(start_paused = true)]
async fn a_silent_authority_leads_to_backoff_and_a_requested_nonce() {
    let mut h = Harness::start().await;
    let first = h.now();
    let _ = h.next("/nonce/req").await;
    // No answer: after the answer timeout and a backoff, asked again.
    let _ = h.next("/nonce/req").await;
    let gap = h.now() - first;
    assert!(
        (2_000 + 800..=2_000 + 1_200).contains(&gap),
        "second request after {gap} ms"
    );
    let _ = h.next("/nonce/req").await;
    let gap2 = h.now() - first - gap;
    assert!(gap2 > gap, "backoff grows: {gap} then {gap2}");
    assert_eq!(h.status().await["last_attestation"]["verdict"], "no-answer");
}

#[tokio::test(start_paused = true)]
async fn containment_discards_the_outstanding_nonce_and_restore_needs_a_new_one() {
    let mut h = Harness::start().await;
    // Renewal at 18-22 s, before the 30 s heartbeat window runs out.
    h.open(40_000).await;
    // A renewal is in flight when the device is contained.
    let in_flight = h.evidence().await;
    h.control(ControlAction::Contain).await;
    assert_eq!(h.state().await, "contained");
    assert_eq!(
        h.authorize("unlock").await.reason,
        Some(DenyCode::Contained)
    );
    // An artifact answering the pre-containment evidence does nothing.
    h.send(
        Inbound::Artifact,
        h.artifact(in_flight, [4; 32], 60_000, 0xb1),
    )
    .await;
    assert_eq!(h.state().await, "contained");
    h.control(ControlAction::Restore).await;
    assert_eq!(h.status().await["reason"], "restored");
    // Still not after restore: only a new round reopens.
    h.send(
        Inbound::Artifact,
        h.artifact(in_flight, [4; 32], 60_000, 0xb2),
    )
    .await;
    assert_eq!(h.state().await, "closed");
    h.give_nonce([5; 32]).await;
    let fresh = h.evidence().await;
    assert_eq!(fresh, [5; 32]);
    h.send(Inbound::Artifact, h.artifact(fresh, [6; 32], 60_000, 0xb3))
        .await;
    assert_eq!(h.state().await, "open");
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_the_gate_open_and_their_lapse_closes_it() {
    let mut h = Harness::start().await;
    h.open(600_000).await;
    // The artifact's window is 30 s from receipt; each heartbeat extends it.
    for _ in 0..3 {
        tokio::time::advance(Duration::from_millis(20_000)).await;
        h.heartbeat(&[]).await;
    }
    tokio::time::advance(Duration::from_millis(29_999)).await;
    let answer = h.authorize("unlock").await;
    assert!(answer.permit, "{answer:?} {}", h.status().await);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(!h.authorize("unlock").await.permit);
    assert_eq!(h.status().await["reason"], "heartbeat-lapsed");
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_naming_the_device_revokes_it_for_good() {
    let mut h = Harness::start().await;
    h.open(600_000).await;
    h.heartbeat(&["d2", "d1"]).await;
    assert_eq!(h.state().await, "revoked");
    // Written off the loop: the marker is there once the state writer got
    // to it.
    let marker = h._dir.path().join("state/revoked");
    let started = std::time::Instant::now();
    while !marker.exists() {
        assert!(started.elapsed() < Duration::from_secs(10), "not persisted");
        std::thread::sleep(Duration::from_millis(1));
        tokio::task::yield_now().await;
    }
    let written: crate::state::RevokedMarker =
        serde_json::from_slice(&std::fs::read(&marker).unwrap()).unwrap();
    assert_eq!(written.source, "heartbeat");
    assert_eq!(written.wall_ms, WALL_T0, "stamped on the Clock seam");
    // Nothing reopens it: not even an artifact answering a fresh round.
    h.control(ControlAction::Restore).await;
    assert_eq!(h.authorize("unlock").await.reason, Some(DenyCode::Revoked));
}

#[tokio::test(start_paused = true)]
async fn a_revocation_that_cannot_be_persisted_is_reported_and_the_gate_stays_revoked() {
    let mut h = Harness::start().await;
    let quoted = renewal_in_flight(&mut h).await;
    // The state directory is gone and a file sits in its place: the
    // marker cannot be written.
    let state = h._dir.path().join("state");
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::write(&state, b"not a directory").unwrap();
    // The authority answers the renewal: revoked.
    h.send(
        Inbound::Artifact,
        h.refusal(quoted, RefusalCode::Revoked, false),
    )
    .await;
    let status = h.status().await;
    assert_eq!(status["reason"], "revoked-by-refusal", "{status}");
    let started = std::time::Instant::now();
    let status = loop {
        let status = h.status().await;
        if !status["detail"].is_null() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{status}");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(status["state"], "revoked", "{status}");
    let detail = status["detail"].as_str().unwrap();
    assert!(detail.contains("state"), "{detail}");
    assert_eq!(h.authorize("unlock").await.reason, Some(DenyCode::Revoked));
}

#[tokio::test(start_paused = true)]
async fn a_stale_nonce_refusal_of_a_renewal_only_asks_for_a_new_nonce() {
    let mut h = Harness::start().await;
    h.open(20_000).await;
    let quoted = h.evidence().await;
    h.send(
        Inbound::Artifact,
        h.refusal(quoted, RefusalCode::StaleNonce, false),
    )
    .await;
    assert_eq!(h.state().await, "open", "the artifact is still valid");
    assert_eq!(h.give_nonce([7; 32]).await, NoncePurpose::Renew);
    assert_eq!(h.evidence().await, [7; 32]);
    // Any other refusal closes.
    h.send(
        Inbound::Artifact,
        h.refusal([7; 32], RefusalCode::PolicyMismatch, false),
    )
    .await;
    assert_eq!(h.state().await, "closed");
    assert_eq!(h.status().await["reason"], "refused-policy-mismatch");
}

#[tokio::test(start_paused = true)]
async fn a_fresh_operation_is_permitted_only_on_its_own_new_artifact() {
    let mut h = Harness::start().await;
    h.open(600_000).await;
    let (reply, pending) = oneshot::channel();
    h.inbox
        .send(Input::Authorize {
            request: AuthorizeRequest {
                op: "refund".into(),
                amount: None,
                currency: None,
                reference: Some("r1".into()),
            },
            reply,
        })
        .await
        .unwrap();
    assert_eq!(h.give_nonce([8; 32]).await, NoncePurpose::FreshOp);
    let quoted = h.evidence().await;
    assert_eq!(quoted, [8; 32]);
    h.send(Inbound::Artifact, h.artifact(quoted, [9; 32], 60_000, 0xc1))
        .await;
    let answer = pending.await.unwrap();
    assert!(answer.permit);
    assert_eq!(answer.cti, Some([0xc1; 16]));
    // The gate keeps its own artifact.
    assert_eq!(h.status().await["artifact"]["cti"], hex::encode([0xa1; 16]));

    // A fresh round that gets no answer is a deny, not a hang.
    let (reply, pending) = oneshot::channel();
    h.inbox
        .send(Input::Authorize {
            request: AuthorizeRequest {
                op: "refund".into(),
                amount: None,
                currency: None,
                reference: None,
            },
            reply,
        })
        .await
        .unwrap();
    let answer = pending.await.unwrap();
    assert!(!answer.permit);
    assert_eq!(answer.reason, Some(DenyCode::FreshAttestationInvalid));
}

// Issue 13, part 5: a close for any cause but expiry voids the evidence in
// flight. Each test opens the gate, lets the renewal send its evidence
// (quoting the artifact's `next_nonce`), closes the gate for one cause
// while the authority's answer is outstanding, then delivers that answer:
// it must not reopen the gate. A round quoted after the close must.

/// Opens the gate (40 s artifact, 30 s heartbeat window) and waits for the
/// renewal's evidence (at 18–22 s); returns the nonce it quoted.
async fn renewal_in_flight(h: &mut Harness) -> [u8; 32] {
    let next = h.open(40_000).await;
    let quoted = h.evidence().await;
    assert_eq!(quoted, next, "the renewal quotes next_nonce");
    quoted
}

/// The answer to evidence quoted before the close arrives: the gate stays
/// closed, the socket denies.
async fn stale_answer_stays_closed(h: &mut Harness, quoted: [u8; 32], why: &str) {
    h.send(
        Inbound::Artifact,
        h.artifact(quoted, [0xee; 32], 40_000, 0xd1),
    )
    .await;
    let status = h.status().await;
    assert_eq!(
        status["state"], "closed",
        "an artifact answering pre-close evidence reopened a gate closed for {why}: {status}"
    );
    assert_eq!(status["reason"], why, "{status}");
    let answer = h.authorize("unlock").await;
    assert!(!answer.permit, "permit after a {why} close: {answer:?}");
    assert_eq!(answer.reason, Some(DenyCode::Closed));
}

/// Recovery: a new round, with a requested nonce, quoted after the close,
/// reopens the gate.
async fn fresh_round_reopens(h: &mut Harness) {
    assert_eq!(h.give_nonce([0x77; 32]).await, NoncePurpose::Renew);
    let fresh = h.evidence().await;
    assert_eq!(fresh, [0x77; 32], "the new round quotes the new nonce");
    h.send(
        Inbound::Artifact,
        h.artifact(fresh, [0x78; 32], 40_000, 0xd2),
    )
    .await;
    let status = h.status().await;
    assert_eq!(status["state"], "open", "{status}");
    assert_eq!(status["artifact"]["cti"], hex::encode([0xd2; 16]));
    assert!(h.authorize("unlock").await.permit);
}

async fn drift_voids_the_renewal_in_flight(kind: mctc_shim::lineage::DriftKind, reason: &str) {
    let mut h = Harness::start().await;
    let quoted = renewal_in_flight(&mut h).await;
    let cti = match kind {
        mctc_shim::lineage::DriftKind::File => None,
        _ => Some([0xa1; 16]),
    };
    h.inbox
        .send(Input::Finding(Finding::Drift {
            kind,
            detail: "test".into(),
            cti,
        }))
        .await
        .unwrap();
    assert_eq!(h.status().await["reason"], reason);
    stale_answer_stays_closed(&mut h, quoted, reason).await;
    fresh_round_reopens(&mut h).await;
}

#[tokio::test(start_paused = true)]
async fn pcr_drift_voids_the_renewal_in_flight() {
    drift_voids_the_renewal_in_flight(mctc_shim::lineage::DriftKind::Pcr, "drift-pcr").await;
}

#[tokio::test(start_paused = true)]
async fn boot_counter_drift_voids_the_renewal_in_flight() {
    drift_voids_the_renewal_in_flight(mctc_shim::lineage::DriftKind::Boot, "drift-boot").await;
}

#[tokio::test(start_paused = true)]
async fn a_measured_file_change_voids_the_renewal_in_flight() {
    drift_voids_the_renewal_in_flight(mctc_shim::lineage::DriftKind::File, "drift-file").await;
}

#[tokio::test(start_paused = true)]
async fn tpm_loss_voids_the_renewal_in_flight_and_no_round_runs_until_it_is_back() {
    let mut h = Harness::start().await;
    let quoted = renewal_in_flight(&mut h).await;
    h.inbox
        .send(Input::Finding(Finding::TpmUnavailable {
            detail: "connection refused".into(),
            class: crate::platform::TpmClass::Retry,
        }))
        .await
        .unwrap();
    assert_eq!(h.status().await["tpm"], "unavailable");
    stale_answer_stays_closed(&mut h, quoted, "attestation-failed").await;
    // The drift task keeps reporting while the TPM stays away: each report
    // keeps the gate closed, and no attestation round starts (a quote
    // needs the TPM; an answer to one quoted before the loss is void).
    for _ in 0..4 {
        tokio::time::advance(Duration::from_millis(250)).await;
        h.inbox
            .send(Input::Finding(Finding::TpmUnavailable {
                detail: "connection refused".into(),
                class: crate::platform::TpmClass::Retry,
            }))
            .await
            .unwrap();
        assert_eq!(h.state().await, "closed");
    }
    let asked = tokio::time::timeout(Duration::from_secs(60), h.next("/nonce/req")).await;
    assert!(asked.is_err(), "a round started while the TPM is away");
    assert_eq!(h.status().await["state"], "closed");
    // Back: recovery through a new round.
    h.inbox
        .send(Input::Finding(Finding::TpmBack))
        .await
        .unwrap();
    assert_eq!(h.status().await["tpm"], "ok");
    fresh_round_reopens(&mut h).await;
}

#[tokio::test(start_paused = true)]
async fn a_revocation_gap_voids_the_renewal_in_flight() {
    let mut h = Harness::start().await;
    let quoted = renewal_in_flight(&mut h).await;
    // Revocations happened at epochs the device never heard of.
    h.heartbeat_with(&[], 3, 2, 30_000).await;
    assert_eq!(h.status().await["reason"], "revocation-gap");
    stale_answer_stays_closed(&mut h, quoted, "revocation-gap").await;
    fresh_round_reopens(&mut h).await;
}

#[tokio::test(start_paused = true)]
async fn a_clock_regression_voids_the_renewal_in_flight() {
    let mut h = Harness::start().await;
    let quoted = renewal_in_flight(&mut h).await;
    h.clock
        .rewound_ms
        .fetch_add(500, std::sync::atomic::Ordering::AcqRel);
    assert_eq!(h.status().await["reason"], "clock-regression");
    stale_answer_stays_closed(&mut h, quoted, "clock-regression").await;
    fresh_round_reopens(&mut h).await;
}

#[tokio::test(start_paused = true)]
async fn a_refused_fresh_round_voids_the_renewal_in_flight() {
    let mut h = Harness::start().await;
    let quoted = renewal_in_flight(&mut h).await;
    // A fresh operation's round is refused while the renewal is out.
    let (reply, pending) = oneshot::channel();
    h.inbox
        .send(Input::Authorize {
            request: AuthorizeRequest {
                op: "refund".into(),
                amount: None,
                currency: None,
                reference: None,
            },
            reply,
        })
        .await
        .unwrap();
    assert_eq!(h.give_nonce([0x55; 32]).await, NoncePurpose::FreshOp);
    let fresh = h.evidence().await;
    h.send(
        Inbound::Artifact,
        h.refusal(fresh, RefusalCode::PolicyMismatch, false),
    )
    .await;
    assert!(!pending.await.unwrap().permit);
    assert_eq!(h.status().await["reason"], "refused-policy-mismatch");
    stale_answer_stays_closed(&mut h, quoted, "refused-policy-mismatch").await;
    fresh_round_reopens(&mut h).await;
}

#[tokio::test(start_paused = true)]
async fn a_contain_control_voids_the_renewal_in_flight_until_restore_and_a_new_round() {
    let mut h = Harness::start().await;
    let quoted = renewal_in_flight(&mut h).await;
    h.control(ControlAction::Contain).await;
    h.send(
        Inbound::Artifact,
        h.artifact(quoted, [0xee; 32], 40_000, 0xd1),
    )
    .await;
    assert_eq!(h.state().await, "contained");
    h.control(ControlAction::Restore).await;
    stale_answer_stays_closed(&mut h, quoted, "restored").await;
    fresh_round_reopens(&mut h).await;
}

#[tokio::test(start_paused = true)]
async fn a_revoke_control_voids_the_renewal_in_flight_for_good() {
    let mut h = Harness::start().await;
    let quoted = renewal_in_flight(&mut h).await;
    h.control(ControlAction::Revoke).await;
    h.send(
        Inbound::Artifact,
        h.artifact(quoted, [0xee; 32], 40_000, 0xd1),
    )
    .await;
    assert_eq!(h.state().await, "revoked");
    assert_eq!(h.authorize("unlock").await.reason, Some(DenyCode::Revoked));
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_lapse_keeps_the_renewal_in_flight() {
    let mut h = Harness::start().await;
    let quoted = renewal_in_flight(&mut h).await;
    // A heartbeat shrinks the window to 1 s: it lapses while the renewal
    // is out (its answer is due within 2 s). The platform did not change:
    // the answer reopens the gate.
    h.heartbeat_with(&[], 0, 0, 1_000).await;
    tokio::time::advance(Duration::from_millis(1_000)).await;
    assert_eq!(h.status().await["reason"], "heartbeat-lapsed");
    h.send(
        Inbound::Artifact,
        h.artifact(quoted, [0xee; 32], 40_000, 0xd1),
    )
    .await;
    assert_eq!(h.state().await, "open");
    assert!(h.authorize("unlock").await.permit);
}

#[tokio::test(start_paused = true)]
async fn an_artifact_expiry_keeps_the_renewal_in_flight() {
    let mut h = Harness::start().await;
    let opened_at = h.now();
    h.open(10_000).await;
    // The renewal at 4.5–5.5 s gets no answer (2 s); the next round asks
    // for a nonce after the backoff (0.8–1.2 s), at 7.3–8.7 s.
    let _ = h.evidence().await;
    let _ = h.next("/nonce/req").await;
    let asked_at = h.now();
    // The nonce comes before its own answer timeout (2 s) and before the
    // artifact's deadline (10 s), late enough that the evidence's answer
    // is still due after the deadline.
    let give_at = (asked_at + 1_900).min(opened_at + 9_500);
    tokio::time::advance(Duration::from_millis(give_at - h.now())).await;
    h.give_nonce_now([0x66; 32], NoncePurpose::Renew).await;
    // Strict: the next publish is the evidence quoting that nonce.
    let quoted = h.evidence().await;
    assert_eq!(quoted, [0x66; 32]);
    tokio::time::advance(Duration::from_millis(opened_at + 10_000 - h.now())).await;
    assert_eq!(h.status().await["reason"], "artifact-expired");
    h.send(
        Inbound::Artifact,
        h.artifact(quoted, [0xee; 32], 10_000, 0xd1),
    )
    .await;
    assert_eq!(h.state().await, "open", "renewal after expiry as before");
    assert!(h.authorize("unlock").await.permit);
}

#[tokio::test(start_paused = true)]
async fn lineage_loss_voids_the_renewal_in_flight() {
    // A fake writer: the store fills and empties when the test says so, and
    // nothing runs while paused time advances (the real writer thread did,
    // so a deadline could close the gate first).
    let (mut h, _commands, lineage) = Harness::start_with_fake_lineage().await;
    let quoted = renewal_in_flight(&mut h).await;
    let renewal_sent = h.now();
    let status = |health| LineageStatus {
        health,
        ..lineage.borrow().clone()
    };
    // The store reaches its quota while the renewal's answer is due.
    lineage.send_replace(status(Health::QuotaReached));
    while h.status().await["reason"] != "lineage-unavailable" {
        tokio::task::yield_now().await;
    }
    assert_eq!(h.state().await, "closed");
    assert_eq!(
        h.authorize("unlock").await.reason,
        Some(DenyCode::Closed),
        "no permit while lineage cannot be written"
    );
    // The collector catches up: the store is writable again, still within
    // the renewal's answer timeout (2 s), and no time passed at all.
    lineage.send_replace(status(Health::Ok));
    while h.status().await["lineage"]["health"] != "ok" {
        tokio::task::yield_now().await;
    }
    assert_eq!(h.now(), renewal_sent, "paused time did not move");
    stale_answer_stays_closed(&mut h, quoted, "lineage-unavailable").await;
    fresh_round_reopens(&mut h).await;
}

// Issue 20, item 1: a failed quote is acted on by its class.

fn quote_error(class: crate::platform::TpmClass) -> PlatformError {
    use crate::platform::{PlatformOp, TpmClass};
    let source = match class {
        TpmClass::Retry => mctc_attest::Error::PcrsUnstable { attempts: 3 },
        TpmClass::Reattest => mctc_attest::Error::NotProvisioned,
        TpmClass::Fatal => mctc_attest::Error::WorkerStopped,
    };
    let e = PlatformError::Tpm {
        op: PlatformOp::Quote,
        source,
    };
    assert_eq!(e.class(), class);
    e
}

#[tokio::test(start_paused = true)]
async fn a_transient_quote_error_retries_the_same_nonce_after_a_backoff_and_keeps_the_gate() {
    let mut h = Harness::start().await;
    let next = h.open(40_000).await;
    h.tpm
        .failures
        .lock()
        .unwrap()
        .push_back(quote_error(crate::platform::TpmClass::Retry));
    // The renewal (at 18–22 s) fails its quote: no new nonce is asked for,
    // the same `next_nonce` is quoted again after the backoff (0.8–1.2 s).
    let opened_at = h.now();
    let quoted = h.evidence().await;
    assert_eq!(quoted, next, "retried with the same nonce");
    let waited = h.now() - opened_at;
    assert!(
        (18_000 + 800..=22_000 + 1_200).contains(&waited),
        "retried {waited} ms after the open"
    );
    assert_eq!(
        h.state().await,
        "open",
        "a busy TPM does not close the gate"
    );
    assert!(h.authorize("unlock").await.permit);
}

#[tokio::test(start_paused = true)]
async fn a_quote_error_that_needs_a_new_round_asks_for_a_new_nonce() {
    let mut h = Harness::start().await;
    h.open(40_000).await;
    h.tpm
        .failures
        .lock()
        .unwrap()
        .push_back(quote_error(crate::platform::TpmClass::Reattest));
    // `next` (strict): the failed renewal publishes no evidence; it asks
    // for a new nonce, and quotes that one.
    assert_eq!(h.give_nonce([0x31; 32]).await, NoncePurpose::Renew);
    assert_eq!(h.evidence().await, [0x31; 32]);
    assert_eq!(h.state().await, "open");
}

#[tokio::test(start_paused = true)]
async fn a_fatal_quote_error_closes_the_gate_at_once_and_recovers_only_after_the_longest_backoff() {
    let mut h = Harness::start().await;
    h.open(40_000).await;
    h.tpm
        .failures
        .lock()
        .unwrap()
        .push_back(quote_error(crate::platform::TpmClass::Fatal));
    // The renewal's quote (18–22 s after the open) fails for good. The
    // next round asks for a new nonce only after retry_max_ms (8 s), and
    // before the 40 s artifact would have expired: the gate is closed by
    // then for the failure, not for expiry.
    let request = h.next("/nonce/req");
    let waited = tokio::time::timeout(Duration::from_secs(60), request).await;
    let asked_at = h.now() - T0;
    assert!(waited.is_ok(), "no round after a fatal quote error");
    assert!(
        (18_000 + 8_000..40_000).contains(&asked_at),
        "asked {asked_at} ms after the open"
    );
    let status = h.status().await;
    assert_eq!(status["state"], "closed", "{status}");
    assert_eq!(status["reason"], "attestation-failed", "{status}");
    assert!(!h.authorize("unlock").await.permit);
}

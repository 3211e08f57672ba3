//! `mctc-agent run`: the daemon's wiring.
//!
//! Threads: the tokio current-thread runtime (MQTT link, router,
//! enforcement, drift check, forwarder, gate socket), the attest TPM worker
//! and the lineage writer. Start order makes the gate safe before anything
//! can ask it: state lock → TPM and measured files → lineage (recovery) →
//! enforcement (Closed) → socket → link. `READY=1` goes out after the
//! first connection attempt has finished (or 5 s), `WATCHDOG=1` from the
//! enforcement loop itself.
//!
//! Shutdown (SIGTERM/SIGINT, or the future the caller passes): gate Closed
//! and recorded, stop recorded and durable, final checkpoint, offline
//! status published retained, clean DISCONNECT, exit 0.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mctc_attest::device::Tpm;
use mctc_service::link::{Link, LinkEvent, LinkOptions, QoS};
use mctc_shim::topics::{self, DeviceTopic, HEARTBEAT};
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::{BootClock, Clock, CurrentBoot};
use crate::config::{self, Validated};
use crate::drift;
use crate::enforcement::{Enforcer, Inbound, Input, Parts, Settings, Watchdog, status};
use crate::enroll::accept_registry_record;
use crate::error::AgentError;
use crate::lineage::entry::Entry;
use crate::lineage::forwarder::{Forwarder, ForwarderInput, ForwarderSettings};
use crate::lineage::store::{Store, StoreConfig};
use crate::lineage::writer::{self, Quoter, WriterSettings, WriterStart};
use crate::measured::MeasuredFiles;
use crate::outbox::Outbox;
use crate::platform::{PlatformError, PlatformOp, TpmPlatform};
use crate::socket;
use crate::state::StateDir;

/// The agent's version, as recorded and published.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Longest wait for the first connection attempt before `READY=1`.
const READY_WAIT: Duration = Duration::from_secs(5);
/// Largest MQTT packet accepted or sent: the limit every mctc client shares,
/// far above any mctc message (a lineage batch is ≤ 64 KiB) and above the
/// broker's `max_packet_size`, so that an oversized message is dropped by the
/// router and logged, rather than tearing the connection down.
pub const MAX_PACKET: usize = mctc_service::link::MAX_PACKET_BYTES;
/// Time for the goodbye publishes before the link is cut.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);
/// Timeout of a checkpoint quote.
const QUOTE_TIMEOUT: Duration = Duration::from_secs(5);

/// The checkpoint quoter of the writer thread: the quote runs on the
/// runtime (the attest handle is async) and the thread waits for it.
struct TpmQuoter {
    tpm: Tpm,
    selection: mctc_attest::PcrSelection,
    handle: tokio::runtime::Handle,
}

impl Quoter for TpmQuoter {
    fn quote(&mut self, qualifying_data: [u8; 32]) -> Result<(Vec<u8>, Vec<u8>), PlatformError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let tpm = self.tpm.clone();
        let selection = self.selection;
        self.handle.spawn(async move {
            let _ = tx.send(tpm.quote(qualifying_data.to_vec(), selection).await);
        });
        match rx.recv_timeout(QUOTE_TIMEOUT) {
            Ok(Ok(evidence)) => Ok((evidence.attest, evidence.signature)),
            Ok(Err(source)) => Err(PlatformError::Tpm {
                op: PlatformOp::CheckpointQuote,
                source,
            }),
            Err(_) => Err(PlatformError::Timeout {
                op: PlatformOp::CheckpointQuote,
                within: QUOTE_TIMEOUT,
            }),
        }
    }
}

struct SdWatchdog;

impl Watchdog for SdWatchdog {
    fn ping(&mut self) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
    }
}

fn notify(state: sd_notify::NotifyState<'_>) {
    let _ = sd_notify::notify(&[state]);
}

/// Runs the daemon until `shutdown` resolves (with the stop reason).
pub async fn run(
    config: Validated,
    shutdown: impl Future<Output = String>,
) -> Result<(), AgentError> {
    let device = config.device.clone();
    let state = StateDir::open(config.state_dir())?;
    let _lock = state.lock()?;
    let keys = config::authority_keys(&config)?;
    let revoked = state.is_revoked()?;
    let control_seq = state.control_seq()?;
    let enrollment = state.enrollment()?;
    if enrollment.is_none() {
        tracing::warn!(device = %device, "not enrolled yet: run `mctc-agent enroll` (the gate stays closed)");
    }
    let clock: Arc<dyn Clock> = Arc::new(BootClock {
        wall_trusted: config.raw.attestation.wall_clock_trusted,
    });

    // TPM: the AK must be loadable for quotes; boot counters for records.
    let tpm = Tpm::open(config.tpm_config()).await?;
    let identity = tpm.identity().await?;
    if let Some(e) = &enrollment
        && e.ak_name != hex::encode(&identity.ak_name)
    {
        tracing::warn!("the TPM's AK is not the enrolled one: run `mctc-agent enroll` again");
    }
    let boot = CurrentBoot::new(tpm.boot_counters().await?);
    let platform = TpmPlatform { tpm: tpm.clone() };
    let measured = MeasuredFiles::start(
        config.raw.measured.pcr,
        &config.raw.measured.files,
        &platform,
        boot.get(),
        &state,
    )
    .await?;

    // Lineage: recover, then the writer thread owns the store.
    let l = &config.raw.lineage;
    let store = Store::open(StoreConfig {
        dir: state.lineage_dir(),
        segment_bytes: l.segment_bytes,
        quota_bytes: l.quota_bytes,
        reserve_bytes: l.reserve_bytes,
    });
    let (lineage, writer_thread) = writer::spawn(WriterStart {
        store,
        device: device.clone(),
        clock: Arc::clone(&clock),
        boot: boot.clone(),
        quoter: Box::new(TpmQuoter {
            tpm: tpm.clone(),
            selection: config.attest_pcrs,
            handle: tokio::runtime::Handle::current(),
        }),
        settings: WriterSettings {
            commit_window: Duration::from_micros(l.group_commit_window_us),
            checkpoint_every_records: l.checkpoint_every_records,
            checkpoint_every: Duration::from_secs(l.checkpoint_every_secs),
        },
    })?;
    lineage.record(Entry::agent_start(VERSION));
    let ak_hex = hex::encode(&identity.ak_name);
    if enrollment.as_ref().is_some_and(|e| e.ak_name == ak_hex)
        && state.enrollment_recorded().as_deref() != Some(ak_hex.as_str())
    {
        let ek_sha256 = identity.ek_fingerprint();
        let recorded = lineage.append(Entry::Enrolled {
            ak_name: identity.ak_name.clone(),
            ek_sha256,
        });
        if let Ok(Ok(_)) = recorded.await {
            state.set_enrollment_recorded(&ak_hex)?;
        }
    }

    // The broker link.
    let status_topic = DeviceTopic::Status.topic(&device).as_str().to_owned();
    let mut options = LinkOptions::new(device.as_str()).last_will(
        status_topic.clone(),
        status::offline(
            device.as_str(),
            VERSION,
            "connection-lost",
            clock.wall_display_ms(),
        ),
        true,
    );
    for topic in [
        DeviceTopic::Nonce,
        DeviceTopic::Artifact,
        DeviceTopic::Control,
        DeviceTopic::LineageAck,
        DeviceTopic::EnrollResult,
        DeviceTopic::Registry,
    ] {
        options = options.subscribe(topic.topic(&device).as_str(), QoS::AtLeastOnce);
    }
    options = options.subscribe(HEARTBEAT, QoS::AtLeastOnce);
    options.max_packet_bytes = MAX_PACKET;
    let link = Link::start(&config.raw.broker, options)?;
    let client = link.client().clone();

    // Tasks.
    let (inbox_tx, inbox_rx) = mpsc::channel::<Input>(1024);
    let (forward_tx, forward_rx) = mpsc::channel::<ForwarderInput>(256);
    let (baseline_tx, baseline_rx) = watch::channel(None);
    let (forwarder, forward_status) = Forwarder::new(
        device.clone(),
        state.lineage_dir(),
        client.clone(),
        lineage.clone(),
        state.clone(),
        ForwarderSettings {
            window: l.forward_window_batches,
            resend_after: Duration::from_millis(l.resend_after_ms),
            receipt_keys: config::collector_keys(&config)?,
        },
    );
    let forwarder_task = tokio::spawn(forwarder.run(forward_rx));
    let a = &config.raw.attestation;
    let watchdog = sd_notify::watchdog_enabled();
    let enforcer = Enforcer::new(
        Settings {
            issuer: config.raw.authority.issuer.clone(),
            answer_timeout_ms: a.answer_timeout_ms,
            retry_min_ms: a.retry_min_ms,
            retry_max_ms: a.retry_max_ms,
            status_interval_ms: config.raw.status.interval_ms,
            fresh_timeout_ms: config.raw.gate.fresh_request_timeout_ms,
            max_fresh_age_ms: a.max_fresh_age_ms,
            pcrs: config.pcrs,
            version: VERSION,
            watchdog,
            enrolled: enrollment.is_some(),
            cert_not_after_ms: cert_not_after_ms(&config.raw.broker.cert),
        },
        Parts {
            device: device.clone(),
            keys: keys.clone(),
            revoked,
            control_seq,
            clock: Arc::clone(&clock),
            boot: boot.clone(),
            platform: platform.clone(),
            outbox: client.clone(),
            lineage: lineage.clone(),
            forward: forward_status,
            state: state.clone(),
            inbox: inbox_tx.clone(),
            baseline: baseline_tx,
        },
        watchdog.map(|_| Box::new(SdWatchdog) as Box<dyn Watchdog>),
    );
    let enforcer_task = tokio::spawn(enforcer.run(inbox_rx));
    let drift_task = tokio::spawn(drift::run(
        platform,
        config.drift_interval(),
        baseline_rx,
        measured,
        boot.clone(),
        state.clone(),
        inbox_tx.clone(),
    ));
    let socket_path = config.raw.gate.socket.clone();
    let listener = socket::bind(&socket_path, config.raw.gate.group.as_deref())?;
    let socket_task = tokio::spawn(socket::serve(
        listener,
        socket::Service {
            inbox: inbox_tx.clone(),
            lineage: lineage.clone(),
            settings: config.raw.gate.clone(),
            clock: Arc::clone(&clock),
        },
    ));
    let (first_tx, first_rx) = oneshot::channel();
    let (stop_router, stop_rx) = oneshot::channel();
    let router_task = tokio::spawn(route(
        link,
        Router {
            device: device.clone(),
            keys,
            state: state.clone(),
            clock: Arc::clone(&clock),
            inbox: inbox_tx.clone(),
            forward: forward_tx,
            first: Some(first_tx),
        },
        stop_rx,
    ));
    let _ = tokio::time::timeout(READY_WAIT, first_rx).await;
    notify(sd_notify::NotifyState::Ready);
    tracing::info!(device = %device, version = VERSION, socket = %socket_path.display(), "mctc-agent running");

    let reason = shutdown.await;
    tracing::info!(%reason, "stopping");
    notify(sd_notify::NotifyState::Stopping);

    // Gate closed and the stop durable before anything else goes.
    let (reply, stopped) = oneshot::channel();
    if inbox_tx
        .send(Input::Shutdown {
            reason: reason.clone(),
            reply,
        })
        .await
        .is_ok()
    {
        let _ = stopped.await;
    }
    socket_task.abort();
    let _ = std::fs::remove_file(&socket_path);
    drift_task.abort();
    let _ = enforcer_task.await;
    lineage.stop().await;
    let _ = writer_thread.join();
    let offline = status::offline(
        device.as_str(),
        VERSION,
        "shutdown",
        clock.wall_display_ms(),
    );
    let _ = Outbox::publish(&client, &status_topic, offline, QoS::AtLeastOnce, true).await;
    let _ = stop_router.send(());
    let link = router_task.await.ok();
    let _ = forwarder_task.await;
    if let Some(link) = link {
        link.shutdown(DISCONNECT_GRACE).await;
    }
    tpm.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

struct Router {
    device: mctc_shim::DeviceId,
    keys: Vec<mctc_shim::AuthorityKey>,
    state: StateDir,
    clock: Arc<dyn Clock>,
    inbox: mpsc::Sender<Input>,
    forward: mpsc::Sender<ForwarderInput>,
    first: Option<oneshot::Sender<()>>,
}

/// Largest payload looked at (anything bigger is no mctc message).
const MAX_PAYLOAD: usize = 70 * 1024;

/// Hands link events to the enforcement task and the forwarder; returns
/// the link when told to stop.
async fn route(mut link: Link, mut router: Router, mut stop: oneshot::Receiver<()>) -> Link {
    loop {
        let event = tokio::select! {
            _ = &mut stop => return link,
            event = link.recv() => event,
        };
        let Some(event) = event else {
            return link;
        };
        if let Some(first) = router.first.take() {
            let _ = first.send(());
        }
        let delivered = match event {
            LinkEvent::Connected { session } => {
                let _ = router.forward.send(ForwarderInput::Connected).await;
                router
                    .inbox
                    .send(Input::Connected { session })
                    .await
                    .is_ok()
            }
            LinkEvent::Subscribed { session } => {
                tracing::info!(session, "subscribed to device topics");
                true
            }
            LinkEvent::Disconnected { reason } => {
                tracing::warn!(%reason, "broker connection lost");
                let _ = router.forward.send(ForwarderInput::Disconnected).await;
                router
                    .inbox
                    .send(Input::Disconnected { error: reason })
                    .await
                    .is_ok()
            }
            LinkEvent::SubscribeRefused { topic } => {
                tracing::error!(%topic, "subscription refused by the broker (ACL?)");
                true
            }
            LinkEvent::Message { topic, payload, .. } => {
                let received_ms = router.clock.now_ms();
                router.dispatch(&topic, payload, received_ms).await
            }
        };
        if !delivered {
            return link;
        }
    }
}

impl Router {
    async fn dispatch(&self, topic: &str, payload: Vec<u8>, received_ms: u64) -> bool {
        if payload.len() > MAX_PAYLOAD {
            tracing::warn!(topic, len = payload.len(), "oversized message dropped");
            return true;
        }
        let kind = if topic == HEARTBEAT {
            Inbound::Heartbeat
        } else {
            match topics::parse(topic) {
                Some((which, device)) if device == self.device => match which {
                    DeviceTopic::Nonce => Inbound::Nonce,
                    DeviceTopic::Artifact => Inbound::Artifact,
                    DeviceTopic::Control => Inbound::Control,
                    DeviceTopic::LineageAck => {
                        let _ = self.forward.send(ForwarderInput::Ack(payload)).await;
                        return true;
                    }
                    DeviceTopic::EnrollResult | DeviceTopic::Registry => {
                        // The authority's signed registry record for this
                        // device (retained on registry/{id}, which the ACL
                        // lets the device read; newer versions replace
                        // older ones). Anything else on the enrollment
                        // result topic is enrollment's.
                        let _ =
                            accept_registry_record(&payload, &self.keys, &self.device, &self.state);
                        return true;
                    }
                    _ => {
                        tracing::debug!(topic, "message on an unexpected topic dropped");
                        return true;
                    }
                },
                _ => {
                    tracing::warn!(topic, "message on a foreign topic dropped");
                    return true;
                }
            }
        };
        self.inbox
            .send(Input::Message {
                kind,
                payload,
                received_ms,
            })
            .await
            .is_ok()
    }
}

/// Waits for SIGTERM or SIGINT; returns the reason.
pub async fn signals() -> String {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the daemon cannot stop cleanly; it still
        // runs (systemd's SIGKILL after the timeout leaves the gate closed).
        std::future::pending::<()>().await;
        return String::new();
    };
    tokio::select! {
        _ = term.recv() => "sigterm".into(),
        _ = int.recv() => "sigint".into(),
    }
}

/// The notAfter of the first certificate in the PEM file at `path`, Unix
/// ms; `None` if it cannot be read (the link reports that itself).
fn cert_not_after_ms(path: &std::path::Path) -> Option<u64> {
    let pem = std::fs::read(path).ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(secs.saturating_mul(1000))
}

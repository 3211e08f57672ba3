//! `mctc-authority run`: the MQTT link, the dispatcher (topic parsing, rate
//! limits, the bounded queue), the two worker threads, systemd readiness
//! and watchdog, and an orderly shutdown.
//!
//! ```text
//!   broker ──link──▶ dispatcher ──bounded queue──▶ engine thread (store conn 1)
//!                        │ drop + log: retained, unknown topic,          │
//!                        │ rate limited, queue full                      ▼
//!                        │                                     publish (try_publish)
//!   housekeeping thread (store conn 2): heartbeat (lease), outbox, sweep ──▶ publish
//! ```

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

use mctc_attest::verifier::{EkCaBundle, EkPolicy};
use mctc_service::link::{Link, LinkEvent, LinkOptions, QoS};
use mctc_service::metrics::MetricsServer;
use mctc_service::status::{Instance, Role, State};
use mctc_shim::DeviceId;
use mctc_shim::topics::{self, DeviceTopic};
use ring::rand::{SecureRandom, SystemRandom};
use sd_notify::NotifyState;

use crate::config::Config;
use crate::engine::{Engine, EngineSettings, INPUT_TOPICS, max_input_len, topic_name};
use crate::error::Error;
use crate::housekeeping::{HeartbeatSettings, Housekeeper, Wake};
use crate::issuer::{Issuer, KeySigner};
use crate::metrics::AuthorityMetrics;
use crate::now::{Now, SystemClock};
use crate::outbox::LinkPublisher;
use crate::policy::Policy;
use crate::ratelimit::RateLimiter;
use crate::store::sqlite::SqliteStore;

/// The shared-subscription group of every authority instance.
pub const SHARE_GROUP: &str = "mctc-authority";
/// A worker that has not reported for this long is considered hung: the
/// watchdog is no longer fed and systemd restarts the service.
const ALIVE_WITHIN_MS: u64 = 15_000;
/// How long queued publishes get to leave at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How often a change of heartbeat leadership is looked for (to publish it
/// in the retained status).
const STATUS_CHECK: Duration = Duration::from_millis(500);

struct Job {
    topic: DeviceTopic,
    device: DeviceId,
    payload: Vec<u8>,
}

fn store_error(config: &Config) -> impl Fn(crate::store::StoreError) -> Error + '_ {
    move |e| Error::Store {
        path: config.database.clone(),
        source: e,
    }
}

fn ek_policy(config: &Config) -> Result<EkPolicy, Error> {
    let bundle = match &config.enrollment.ek_ca_bundle {
        None => None,
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| Error::ReadFile {
                path: path.clone(),
                source,
            })?;
            Some(EkCaBundle::from_pem(&pem).map_err(|e| Error::config(path, e.to_string()))?)
        }
    };
    Ok(EkPolicy::new(
        bundle,
        config.enrollment.ek_allow_sha256.iter().copied(),
    ))
}

fn random_hex(bytes: usize) -> Result<String, Error> {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| Error::Environment("system random number generator failed".into()))?;
    Ok(hex::encode(buf))
}

fn notify(state: NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "systemd notification failed");
    }
}

/// Runs the authority until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let policy = Arc::new(Policy::load(&config.policy)?);
    let issuer = Arc::new(Issuer::new(
        KeySigner::load(&config.signing_key)?,
        config.authority_id.clone(),
    ));
    let ek_policy = ek_policy(&config)?;
    let clock = Now::read()?;
    let engine_store = SqliteStore::open(&config.database).map_err(store_error(&config))?;
    let house_store = SqliteStore::open(&config.database).map_err(store_error(&config))?;

    let instance = match &config.instance {
        Some(name) => name.clone(),
        None => random_hex(4)?,
    };
    let client_id = format!("mctc-authority-{instance}");
    let metrics = Arc::new(AuthorityMetrics::default());
    let status = Instance {
        role: Role::Authority,
        instance: instance.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started: mctc_service::status::unix_now(),
    };
    let holder = format!("{client_id}/{}/{}", std::process::id(), random_hex(4)?);
    let mut options = status.with_last_will(LinkOptions::new(client_id.clone()));
    options.max_packet_bytes = config.limits.max_packet_bytes;
    options.request_capacity = config.limits.queue.max(256);
    options.event_capacity = 256;
    for topic in INPUT_TOPICS {
        let filter = topic
            .shared_filter(SHARE_GROUP)
            .ok_or_else(|| Error::Environment("shared subscription filter".into()))?;
        options = options.subscribe(filter.as_str(), QoS::AtLeastOnce);
    }
    // The broker's answers to the device rights this instance sends.
    options = options.subscribe(mctc_service::dynsec::RESPONSE_TOPIC, QoS::AtLeastOnce);
    let mut link = Link::start(&config.broker, options)?;
    let publisher = LinkPublisher::new(link.client().clone(), link.connected());

    let engine_alive = Arc::new(AtomicU64::new(clock.boot_ms));
    let house_alive = Arc::new(AtomicU64::new(clock.boot_ms));
    let (jobs, job_queue) = mpsc::sync_channel::<Job>(config.limits.queue);
    let engine = {
        let settings = EngineSettings {
            policy: Arc::clone(&policy),
            issuer: Arc::clone(&issuer),
            ek_policy,
            limits: config.limits,
            challenge_ttl_ms: config.enrollment.challenge_ttl_ms,
        };
        let mut engine = Engine::new(engine_store, settings, SystemClock::of(&clock))
            .with_metrics(Arc::clone(&metrics));
        let publisher = publisher.clone();
        let alive = Arc::clone(&engine_alive);
        let clock = clock.clone();
        spawn("mctc-engine", move || {
            loop {
                match job_queue.recv_timeout(Duration::from_secs(1)) {
                    Ok(job) => engine.handle(job.topic, &job.device, &job.payload, &publisher),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                alive.store(clock.refresh().boot_ms, Ordering::Relaxed);
            }
            let counters = engine.counters();
            tracing::info!(
                sender_faults = counters.sender_faults,
                transient_failures = counters.transient_failures,
                failures = counters.failures,
                "engine stopped"
            );
        })?
    };
    let (wake, wake_queue) = mpsc::channel::<Wake>();
    let housekeeper = {
        let settings = HeartbeatSettings {
            holder,
            interval_ms: policy.heartbeat_interval_ms(),
            window_ms: policy.heartbeat_window_ms(),
        };
        tracing::info!(
            interval_ms = settings.interval_ms,
            window_ms = settings.window_ms,
            "heartbeat settings"
        );
        let house = Housekeeper::new(house_store, Arc::clone(&issuer), settings, clock.clone())
            .with_metrics(Arc::clone(&metrics));
        let publisher = publisher.clone();
        let alive = Arc::clone(&house_alive);
        spawn("mctc-housekeeping", move || {
            house.run(&wake_queue, &publisher, &alive)
        })?
    };

    let serving = mctc_service::metrics::CancellationToken::new();
    let metrics_task = match config.metrics {
        None => None,
        Some(addr) => {
            let server = MetricsServer::bind(addr)
                .await
                .map_err(mctc_service::ServiceError::from)?;
            let bound = server.local_addr().unwrap_or(addr);
            tracing::info!(addr = %bound, "metrics served on /metrics");
            let metrics: Arc<dyn mctc_service::metrics::Metrics> = Arc::clone(&metrics) as _;
            Some(tokio::spawn(server.serve(metrics, serving.clone())))
        }
    };

    tracing::info!(
        client_id,
        authority_id = %config.authority_id,
        key = %mctc_service::keys::fingerprint(&issuer.public_key()),
        classes = policy.classes.len(),
        "authority running"
    );
    notify(NotifyState::Ready);

    let watchdog = sd_notify::watchdog_enabled();
    let mut watchdog_tick =
        tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |d| {
            (d / 2).max(Duration::from_millis(100))
        }));
    let mut limiter = RateLimiter::new(
        config.limits.request_burst,
        config.limits.requests_per_minute,
    );
    let mut shutdown = std::pin::pin!(shutdown);
    // What the retained status last said about leadership (None: nothing
    // published in this session yet).
    let mut said_leader: Option<bool> = None;
    let mut status_tick = tokio::time::interval(STATUS_CHECK);
    let result = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            _ = status_tick.tick(), if said_leader.is_some() => {
                let leader = metrics.heartbeat_leader.get() == 1;
                if said_leader != Some(leader) {
                    publish_status(&link, &status, State::Online, Some(leader));
                    said_leader = Some(leader);
                }
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                let now = clock.refresh().boot_ms;
                let fresh = |a: &AtomicU64| now.saturating_sub(a.load(Ordering::Relaxed)) < ALIVE_WITHIN_MS;
                if fresh(&engine_alive) && fresh(&house_alive) {
                    notify(NotifyState::Watchdog);
                } else {
                    tracing::error!("a worker thread is not responding; watchdog not fed");
                }
            }
            event = link.recv() => match event {
                None => break Err(Error::Environment("the MQTT link stopped".into())),
                Some(event) => {
                    if matches!(event, LinkEvent::Connected { .. }) {
                        // Every session: the Last Will may have replaced it.
                        let leader = metrics.heartbeat_leader.get() == 1;
                        publish_status(&link, &status, State::Online, Some(leader));
                        said_leader = Some(leader);
                    }
                    dispatch(event, &jobs, &wake, &mut limiter, &clock, &metrics);
                }
            },
        }
    };
    notify(NotifyState::Stopping);
    tracing::info!("stopping");
    drop(jobs);
    let _ = wake.send(Wake::Stop);
    join(engine).await;
    join(housekeeper).await;
    serving.cancel();
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    // A clean DISCONNECT discards the will: say `offline` ourselves.
    publish_status(&link, &status, State::Offline, None);
    link.shutdown(SHUTDOWN_GRACE).await;
    result
}

/// Publishes the instance's retained status (QoS 1). Best effort: a full
/// request queue drops it, and the next session or change publishes again.
fn publish_status(link: &Link, status: &Instance, state: State, leader: Option<bool>) {
    if let Err(e) = link.client().try_publish(
        status.topic(),
        QoS::AtLeastOnce,
        true,
        status.status(state, leader),
    ) {
        tracing::warn!(error = %e, "service status not published");
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .map_err(|e| Error::Environment(format!("cannot start thread {name}: {e}")))
}

async fn join(handle: JoinHandle<()>) {
    let name = handle.thread().name().unwrap_or("worker").to_owned();
    match tokio::task::spawn_blocking(move || handle.join()).await {
        Ok(Ok(())) => {}
        _ => tracing::error!(thread = name, "worker thread ended abnormally"),
    }
}

fn dispatch(
    event: LinkEvent,
    jobs: &SyncSender<Job>,
    wake: &mpsc::Sender<Wake>,
    limiter: &mut RateLimiter,
    clock: &Now,
    metrics: &AuthorityMetrics,
) {
    let (topic, payload, retain) = match event {
        LinkEvent::Message { topic, payload, .. }
            if topic == mctc_service::dynsec::RESPONSE_TOPIC =>
        {
            let _ = wake.send(Wake::BrokerReply(payload));
            return;
        }
        LinkEvent::Message {
            topic,
            payload,
            retain,
        } => (topic, payload, retain),
        LinkEvent::Connected { .. } => {
            let _ = wake.send(Wake::Reannounce);
            return;
        }
        LinkEvent::Subscribed { session } => {
            // Logged only once the broker granted the subscriptions: the
            // harness and operators read this line as "requests are heard".
            tracing::info!(session, "subscribed to device requests");
            return;
        }
        LinkEvent::Disconnected { reason } => {
            tracing::warn!(%reason, "broker connection lost; reconnecting");
            return;
        }
        LinkEvent::SubscribeRefused { topic } => {
            tracing::error!(%topic, "broker refused a subscription: check the ACL for mctc-authority");
            return;
        }
    };
    let Some((kind, device)) = topics::parse(&topic).filter(|(k, _)| INPUT_TOPICS.contains(k))
    else {
        metrics.inputs_dropped.inc("not-a-request-topic");
        tracing::info!(%topic, reason = "not a request topic", "input dropped");
        return;
    };
    // The sender's fault (a replay, too large, too often): info, as in the
    // engine. The queue's state is ours and logged louder below.
    let dropped = |reason: &str| {
        let label = reason.split(':').next().unwrap_or(reason).replace(' ', "-");
        metrics.inputs_dropped.inc(&label);
        tracing::info!(%device, topic = topic_name(kind), reason, "input dropped");
    };
    if retain {
        // A retained request is a replay by construction.
        dropped("retained message");
        return;
    }
    // Checked before queueing, so the queue holds at most `queue` small
    // messages, never `queue` packets of the broker's maximum size.
    if payload.len() > max_input_len(kind) {
        dropped(&format!(
            "oversized: {} bytes, at most {}",
            payload.len(),
            max_input_len(kind)
        ));
        return;
    }
    if !limiter.allow(&device, kind, clock.refresh().boot_ms) {
        dropped("rate limited");
        return;
    }
    match jobs.try_send(Job {
        topic: kind,
        device: device.clone(),
        payload,
    }) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            metrics.inputs_dropped.inc("queue-full");
            tracing::warn!(%device, topic = topic_name(kind), reason = "worker queue full", "input dropped");
        }
        Err(TrySendError::Disconnected(_)) => {
            tracing::error!(%device, topic = topic_name(kind), reason = "worker stopped", "input dropped");
        }
    }
}

//! `mctc-collector run`: the MQTT edge around the ingest core.
//!
//! One worker thread owns the store and the [`Ingest`] core and takes
//! messages over a bounded channel (so a slow disk pushes back on the broker
//! connection instead of growing memory); the async side owns the link,
//! publishes what the worker produces, ticks the gap sweep and pings the
//! worker for the systemd watchdog: the watchdog is fed only while the
//! worker actually answers.
//!
//! Every lineage message passes [`Admission`] first (per-device token
//! bucket, size), before it is decoded or queued: a flooding device's
//! excess and anything larger than a batch are dropped here, counted and
//! reported once per device and interval. The MQTT client accepts packets
//! up to `max_packet_bytes` (default: the limit all mctc clients share,
//! well above the broker's), so no packet the broker delivers can end the
//! session.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mctc_service::link::{Link, LinkEvent, LinkOptions, QoS};
use mctc_service::metrics::{CancellationToken, MetricsServer};
use mctc_service::status::{Instance, Role, State};
use mctc_service::{clock, keys};
use mctc_shim::topics::DeviceTopic;
use mctc_shim::{AuthorityKey, DeviceId, RingCrypto};
use ring::rand::SecureRandom;
use sd_notify::NotifyState;
use tokio::sync::{mpsc, oneshot};

use crate::admission::{Admission, DropReport, Verdict};
use crate::config::{Backend, Config};
use crate::error::{Error, WorkerError};
use crate::ingest::{Ingest, IngestCounters, Publish};
use crate::metrics::CollectorMetrics;
use crate::receipt::ReceiptSigner;
use crate::store::sqlite::SqliteStore;

/// Messages queued towards the worker before the link waits.
const INPUT_QUEUE: usize = 1024;
/// Requests queued towards the broker (acks, alerts).
const REQUEST_QUEUE: usize = 4096;

enum Input {
    Message {
        topic: String,
        payload: Vec<u8>,
        /// CLOCK_BOOTTIME ms when the edge received it (ingest lag).
        arrived_ms: u64,
    },
    /// A lineage payload dropped at the edge for its size.
    Oversize {
        device: DeviceId,
        len: usize,
    },
    Tick,
    Ping(oneshot::Sender<()>),
}

/// Reads the trusted authority keys.
pub fn authority_keys(config: &Config) -> Result<Vec<AuthorityKey>, Error> {
    config
        .authority
        .public_keys
        .iter()
        .map(|path| {
            let key = keys::read_public_key(path)?;
            Ok(AuthorityKey::new(&RingCrypto, key))
        })
        .collect()
}

fn client_id(config: &Config) -> String {
    if let Some(id) = &config.ingest.client_id {
        return id.clone();
    }
    let mut random = [0u8; 4];
    // A failed random source only makes the id predictable, not wrong;
    // uniqueness then rests on the pid.
    if ring::rand::SystemRandom::new().fill(&mut random).is_err() {
        random = std::process::id().to_be_bytes();
    }
    format!("mctc-collector-{}", hex::encode(random))
}

fn notify(state: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(state) {
        tracing::warn!(%error, "could not notify systemd");
    }
}

/// Opens the store and the keys: the ingest core `run` drives and `export`
/// reads. The receipt key must not be one of the authority's keys (each
/// role has its own key).
pub fn open_ingest(config: &Config, instance: String) -> Result<Ingest<SqliteStore>, Error> {
    let keys = authority_keys(config)?;
    let receipts = ReceiptSigner::load(&config.receipts.key)?;
    let public = mctc_shim::Signer::public_key(&receipts);
    if keys.iter().any(|k| *k.public() == public) {
        return Err(Error::Config {
            path: config.receipts.key.clone(),
            reason: "[receipts] key is an authority key; the collector needs its own".into(),
        });
    }
    let store = match config.store.backend {
        Backend::Sqlite => SqliteStore::open(&config.store.path)?
            .with_anomaly_rows_per_kind(config.ingest.anomaly_rows_per_kind),
    };
    Ok(Ingest::new(
        store,
        keys,
        receipts,
        config.ingest.ingest_config(),
        instance,
    ))
}

/// Runs the collector until `shutdown` completes or a fatal error.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let mut admission = Admission::new(config.ingest.admission_config());
    let instance = client_id(&config);
    let metrics = Arc::new(CollectorMetrics::new());
    let ingest = open_ingest(&config, instance.clone())?.with_metrics(Arc::clone(&metrics));
    let receipt_key = keys::fingerprint(&ingest.receipt_key());
    let status = Instance {
        role: Role::Collector,
        instance: status_instance(&instance),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started: mctc_service::status::unix_now(),
    };
    let (input_tx, input_rx) = mpsc::channel::<Input>(INPUT_QUEUE);
    let (output_tx, mut output_rx) = mpsc::unbounded_channel::<Publish>();
    let stop = Arc::new(AtomicBool::new(false));
    let worker = spawn_worker(
        ingest,
        input_rx,
        output_tx,
        stop.clone(),
        Arc::clone(&metrics),
    )?;

    let lineage = DeviceTopic::Lineage
        .shared_filter(&config.ingest.share_group)
        .ok_or_else(|| Error::Config {
            path: "[ingest] share_group".into(),
            reason: "does not make a valid shared subscription".into(),
        })?;
    let mut options = status
        .with_last_will(LinkOptions::new(instance.clone()))
        .subscribe(lineage.as_str(), QoS::AtLeastOnce)
        // Not shared: every instance needs every registry record, and
        // brokers do not deliver retained messages to shared subscriptions.
        .subscribe(DeviceTopic::Registry.filter().as_str(), QoS::AtLeastOnce);
    options.max_packet_bytes = config.ingest.max_packet_bytes;
    options.request_capacity = REQUEST_QUEUE;
    let mut link = Link::start(&config.broker, options)?;
    // Served only once everything above validated (the broker URL and TLS
    // files are checked by `Link::start`): a bad configuration is one line
    // and nothing listening.
    let serving = CancellationToken::new();
    let metrics_task = match config
        .metrics_listen()
        .map_err(mctc_service::ServiceError::from)?
    {
        None => None,
        Some(addr) => {
            let server = MetricsServer::bind(addr)
                .await
                .map_err(mctc_service::ServiceError::from)?;
            let bound = server.local_addr().unwrap_or(addr);
            tracing::info!(addr = %bound, "metrics served on /metrics");
            let exposed: Arc<dyn mctc_service::metrics::Metrics> = Arc::clone(&metrics) as _;
            Some(tokio::spawn(server.serve(exposed, serving.clone())))
        }
    };

    tracing::info!(
        instance,
        store = %config.store.path.display(),
        receipt_key = %receipt_key,
        "collector started"
    );
    notify(&[NotifyState::Ready]);

    let watchdog = sd_notify::watchdog_enabled().map(|period| {
        let input = input_tx.clone();
        tokio::spawn(feed_watchdog(input, period / 2))
    });
    let tick_ms = (config.ingest.gap_grace_ms / 4).clamp(50, 1_000);
    let mut tick = tokio::time::interval(Duration::from_millis(tick_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    tokio::pin!(shutdown);
    let outcome = loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break Ok(()),
            publish = output_rx.recv() => match publish {
                Some(publish) => send(&link, publish),
                None => break Err(WorkerError::Stopped.into()),
            },
            event = link.recv() => match event {
                Some(LinkEvent::Message { topic, payload, .. }) => {
                    let (verdict, report) =
                        admission.admit(&topic, payload.len(), clock::boottime_ms());
                    metrics.observe_drops(&admission.totals());
                    if let Some(report) = report {
                        log_drops(&report);
                    }
                    let input = match verdict {
                        Verdict::Admit => Input::Message {
                            topic,
                            payload,
                            arrived_ms: clock::boottime_ms(),
                        },
                        Verdict::Oversize { device, len } => Input::Oversize { device, len },
                        Verdict::Drop => continue,
                    };
                    if input_tx.send(input).await.is_err() {
                        break Err(WorkerError::Stopped.into());
                    }
                }
                // Every session: the Last Will may have replaced it.
                Some(LinkEvent::Connected { .. }) => publish_status(&link, &status, State::Online),
                // Logged once the broker granted the subscriptions, not at
                // CONNACK: readers take this line as "lineage is heard".
                Some(LinkEvent::Subscribed { session }) => {
                    tracing::info!(session, "subscribed to lineage and registry");
                }
                Some(LinkEvent::SubscribeRefused { topic }) => {
                    tracing::error!(topic, "the broker refused a subscription (ACL?)");
                }
                Some(LinkEvent::Disconnected { .. }) => {}
                None => break Err(Error::LinkStopped),
            },
            _ = tick.tick() => {
                for report in admission.tick(clock::boottime_ms()) {
                    log_drops(&report);
                }
                metrics.observe_drops(&admission.totals());
                // A full queue already means the worker is busy; skip.
                let _ = input_tx.try_send(Input::Tick);
            }
        }
    };

    notify(&[NotifyState::Stopping]);
    let dropped = admission.totals();
    tracing::info!(
        rate_limited = dropped.rate_limited,
        oversize = dropped.oversize,
        untracked = dropped.untracked,
        "collector stopping"
    );
    if let Some(task) = watchdog {
        task.abort();
    }
    stop.store(true, Ordering::SeqCst);
    drop(input_tx);
    let joined = tokio::task::spawn_blocking(move || worker.join()).await;
    while let Ok(publish) = output_rx.try_recv() {
        send(&link, publish);
    }
    serving.cancel();
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    // A clean DISCONNECT discards the will: say `offline` ourselves.
    publish_status(&link, &status, State::Offline);
    link.shutdown(Duration::from_secs(2)).await;
    match joined {
        Ok(Ok(counters)) => {
            // By owner: what devices got wrong, what the database did.
            tracing::info!(
                sender_faults = counters.sender_faults,
                transient_failures = counters.transient_failures,
                failures = counters.failures,
                retried = counters.retried,
                abandoned = counters.abandoned,
                "ingest stopped"
            );
            outcome
        }
        _ => Err(WorkerError::Panicked.into()),
    }
}

/// One line per device and interval, not per message.
fn log_drops(report: &DropReport) {
    let (now, total) = (report.dropped, report.totals);
    match &report.device {
        Some(device) => tracing::warn!(
            device = %device,
            rate_limited = now.rate_limited,
            oversize = now.oversize,
            total_rate_limited = total.rate_limited,
            total_oversize = total.oversize,
            "lineage dropped before decoding"
        ),
        None => tracing::warn!(
            untracked = now.untracked,
            total_untracked = total.untracked,
            "lineage from more devices than tracked_devices dropped"
        ),
    }
}

fn send(link: &Link, publish: Publish) {
    let topic = publish.topic;
    if let Err(error) = link.client().try_publish(
        topic.clone(),
        QoS::AtLeastOnce,
        publish.retain,
        publish.payload,
    ) {
        // Acks are idempotent (the device resends and gets the same ack);
        // alerts are persisted in the store.
        tracing::warn!(topic, %error, "could not queue a publication; dropped");
    }
}

/// The status topic's instance level: the client id when it is one (the
/// default `mctc-collector-<hex>` is), else the client id with every other
/// character replaced by `_`, cut to 32.
fn status_instance(client_id: &str) -> String {
    if mctc_service::status::valid_instance(client_id) {
        return client_id.to_owned();
    }
    client_id
        .chars()
        .take(32)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Publishes the instance's retained status (QoS 1). Best effort: the next
/// session publishes again.
fn publish_status(link: &Link, status: &Instance, state: State) {
    if let Err(error) = link.client().try_publish(
        status.topic(),
        QoS::AtLeastOnce,
        true,
        status.status(state, None),
    ) {
        tracing::warn!(%error, "service status not published");
    }
}

fn spawn_worker(
    mut ingest: Ingest<SqliteStore>,
    mut input: mpsc::Receiver<Input>,
    output: mpsc::UnboundedSender<Publish>,
    stop: Arc<AtomicBool>,
    metrics: Arc<CollectorMetrics>,
) -> Result<std::thread::JoinHandle<IngestCounters>, Error> {
    std::thread::Builder::new()
        .name("mctc-ingest".into())
        .spawn(move || {
            while let Some(next) = input.blocking_recv() {
                // Whatever is still queued at shutdown is not acked, so the
                // devices resend it.
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let publications = match next {
                    Input::Message {
                        topic,
                        payload,
                        arrived_ms,
                    } => {
                        let out = ingest.handle(&topic, &payload, clock::wall_ms());
                        let lag = clock::boottime_ms().saturating_sub(arrived_ms);
                        metrics
                            .ingest_lag_ms
                            .set(i64::try_from(lag).unwrap_or(i64::MAX));
                        out
                    }
                    Input::Oversize { device, len } => {
                        ingest.oversized(&device, len, clock::wall_ms())
                    }
                    Input::Tick => ingest.tick(clock::wall_ms()),
                    Input::Ping(reply) => {
                        let _ = reply.send(());
                        Vec::new()
                    }
                };
                metrics.observe_counters(&ingest.counters());
                for publish in publications {
                    if output.send(publish).is_err() {
                        return ingest.counters();
                    }
                }
            }
            ingest.counters()
        })
        .map_err(|e| WorkerError::Spawn(e).into())
}

async fn feed_watchdog(input: mpsc::Sender<Input>, every: Duration) {
    let mut interval = tokio::time::interval(every);
    loop {
        interval.tick().await;
        let (reply, answered) = oneshot::channel();
        if input.send(Input::Ping(reply)).await.is_err() {
            return;
        }
        // No answer: no WATCHDOG=1, and systemd restarts a stuck worker.
        if tokio::time::timeout(every, answered)
            .await
            .is_ok_and(|r| r.is_ok())
        {
            notify(&[NotifyState::Watchdog]);
        }
    }
}

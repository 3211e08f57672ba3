//! An MQTT session over mutual TLS that keeps itself up.
//!
//! rumqttc reconnects as soon as it is polled again after an error, with no
//! delay; a fleet that loses its broker would hammer it. This wrapper owns the
//! event loop in one task, sleeps a jittered exponential backoff between
//! attempts, subscribes again on every new session (clean sessions: nothing is
//! assumed to survive on the broker), and hands the application typed events.
//!
//! Delivery guarantees are the application's: rumqttc does not say which
//! PUBACK belongs to which publish, and in-flight publishes can be lost when a
//! session is not resumed. Lineage therefore acknowledges by sequence number,
//! and anything queued carries its own expiry.

use std::collections::VecDeque;
use std::time::Duration;

use rumqttc::{
    Event, LastWill, MqttOptions, Packet, SubscribeFilter, SubscribeReasonCode, TlsConfiguration,
    Transport,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::{BrokerConfig, ServiceError, tls};

pub use rumqttc::{AsyncClient, QoS};

/// `max_packet_size` of the shipped broker (`configs/mosquitto/conf.d/mctc.conf`;
/// a test in `tests/tests/configs.rs` keeps the two equal). Twice the largest
/// mctc message (a 64 KiB lineage batch plus its topic and MQTT framing), so
/// every legitimate message passes and a flood of large packets is refused at
/// the broker, which disconnects the sender rather than delivering it.
pub const BROKER_MAX_PACKET: usize = 128 * 1024;

/// The largest packet every mctc client accepts (the default of
/// [`LinkOptions::max_packet_bytes`]). rumqttc tears the whole session down
/// on an incoming packet above its limit, so this must be at least what the
/// broker delivers: eight times the shipped broker's limit also covers a
/// broker configured at 1 MiB (EMQX's default). Anything larger than an mctc
/// message is dropped by the application, never by the MQTT client.
pub const MAX_PACKET_BYTES: usize = 8 * BROKER_MAX_PACKET;

/// How a link behaves; `client_id` is usually the certificate CN.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    pub client_id: String,
    /// Subscribed on every new session, in one SUBSCRIBE.
    pub subscriptions: Vec<(String, QoS)>,
    /// Published by the broker if this client vanishes without DISCONNECT.
    pub last_will: Option<LastWill>,
    /// Largest MQTT packet sent or accepted. An incoming packet above it
    /// ends the session (rumqttc), so it must be at least the broker's
    /// `max_packet_size`; default [`MAX_PACKET_BYTES`].
    pub max_packet_bytes: usize,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Events buffered towards the application before the link waits for it.
    pub event_capacity: usize,
    /// Requests buffered towards the broker (publishes, subscribes).
    pub request_capacity: usize,
}

impl LinkOptions {
    pub fn new(client_id: impl Into<String>) -> LinkOptions {
        LinkOptions {
            client_id: client_id.into(),
            subscriptions: Vec::new(),
            last_will: None,
            max_packet_bytes: MAX_PACKET_BYTES,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(10),
            event_capacity: 256,
            request_capacity: 256,
        }
    }

    pub fn subscribe(mut self, topic: impl Into<String>, qos: QoS) -> LinkOptions {
        self.subscriptions.push((topic.into(), qos));
        self
    }

    pub fn last_will(
        mut self,
        topic: impl Into<String>,
        payload: Vec<u8>,
        retain: bool,
    ) -> LinkOptions {
        self.last_will = Some(LastWill::new(topic, payload, QoS::AtLeastOnce, retain));
        self
    }
}

/// What the link tells the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A new session is up and the subscriptions were sent (not yet
    /// granted). `session` counts sessions since the link started (1, 2, …).
    Connected { session: u64 },
    /// Every subscription of `session` is granted by the broker (its SUBACKs
    /// arrived, none refused): from now on the session hears its topics.
    /// Reported once per session, after [`LinkEvent::Connected`]; at once if
    /// the link subscribes to nothing. A session whose subscriptions are
    /// refused reports it only when the retries are granted.
    Subscribed { session: u64 },
    /// The session ended; the link is backing off before reconnecting.
    Disconnected { reason: String },
    /// A message arrived on a subscribed topic.
    Message {
        topic: String,
        payload: Vec<u8>,
        retain: bool,
    },
    /// The broker refused a subscription (ACL or bad filter).
    SubscribeRefused { topic: String },
}

/// A running link. Dropping it stops the task without a clean DISCONNECT
/// (so the broker publishes the Last Will); [`Link::shutdown`] disconnects.
#[derive(Debug)]
pub struct Link {
    client: AsyncClient,
    events: mpsc::Receiver<LinkEvent>,
    connected: watch::Receiver<bool>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Link {
    /// Starts the link task on the current tokio runtime. Configuration
    /// errors (files, URL, TLS) are returned here; network errors never are:
    /// they become [`LinkEvent::Disconnected`] and a retry.
    pub fn start(broker: &BrokerConfig, options: LinkOptions) -> Result<Link, ServiceError> {
        let (host, port) = broker.endpoint()?;
        let tls = tls::client_config(broker)?;
        let mut mqtt = MqttOptions::new(options.client_id.clone(), host, port);
        mqtt.set_keep_alive(Duration::from_secs(u64::from(
            broker.keep_alive_secs.max(5),
        )));
        mqtt.set_clean_session(true);
        mqtt.set_max_packet_size(options.max_packet_bytes, options.max_packet_bytes);
        mqtt.set_request_channel_capacity(options.request_capacity);
        mqtt.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        if let Some(will) = options.last_will.clone() {
            mqtt.set_last_will(will);
        }
        let (client, mut eventloop) = AsyncClient::new(mqtt, options.request_capacity);
        // mctc's messages are small request/answer pairs: with Nagle's
        // algorithm each would wait for the peer's delayed ACK (~40 ms).
        let mut network = eventloop.network_options();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let (tx, events) = mpsc::channel(options.event_capacity.max(1));
        let (connected_tx, connected) = watch::channel(false);
        let stop = CancellationToken::new();
        let task = tokio::spawn(drive(
            eventloop,
            client.clone(),
            options,
            tx,
            connected_tx,
            stop.clone(),
        ));
        Ok(Link {
            client,
            events,
            connected,
            stop,
            task: Some(task),
        })
    }

    /// For publishing. On paths that must never wait (the gate), use
    /// `try_publish`: a full queue means "not sent", not "block".
    pub fn client(&self) -> &AsyncClient {
        &self.client
    }

    /// The next event; `None` once the link has stopped.
    pub async fn recv(&mut self) -> Option<LinkEvent> {
        self.events.recv().await
    }

    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// A receiver that follows the connected state.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// Sends DISCONNECT (so no Last Will is published), waits up to `grace`
    /// for queued publishes to go out, then stops the task.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.client.try_disconnect();
        if let Some(task) = self.task.take() {
            let stop = self.stop.clone();
            let abort = task.abort_handle();
            if tokio::time::timeout(grace, task).await.is_err() {
                stop.cancel();
                abort.abort();
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn drive(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    options: LinkOptions,
    tx: mpsc::Sender<LinkEvent>,
    connected: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(options.backoff_base, options.backoff_cap);
    // A refused subscription is asked for again after a backoff of its own:
    // the broker refuses a device it has not been granted yet (the
    // authority grants it when the device is added), and a device must
    // start hearing its topics once it is, without a restart.
    let mut refusals = Backoff::new(options.backoff_base, options.backoff_cap);
    // The filters of each SUBSCRIBE not yet answered, oldest first (a broker
    // answers them in order).
    let mut pending: VecDeque<Vec<(String, QoS)>> = VecDeque::new();
    let mut retry: Option<(tokio::time::Instant, Vec<(String, QoS)>)> = None;
    let mut session = 0u64;
    // The session's filters the broker has not granted yet; `Subscribed` is
    // reported when this empties (once per session).
    let mut ungranted: Vec<String> = Vec::new();
    let mut subscribed_reported = false;
    let mut disconnecting = false;
    loop {
        let retry_at = retry.as_ref().map(|(at, _)| *at);
        let polled = tokio::select! {
            () = stop.cancelled() => return,
            () = sleep_until(retry_at), if retry_at.is_some() => {
                if let Some((_, filters)) = retry.take() {
                    tracing::info!(filters = filters.len(), "asking again for refused subscriptions");
                    subscribe(&client, &mut pending, filters);
                }
                continue;
            }
            polled = eventloop.poll() => polled,
        };
        let event = match polled {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                session += 1;
                backoff.reset();
                refusals.reset();
                pending.clear();
                retry = None;
                if !options.subscriptions.is_empty() {
                    subscribe(&client, &mut pending, options.subscriptions.clone());
                }
                ungranted = options
                    .subscriptions
                    .iter()
                    .map(|(t, _)| t.clone())
                    .collect();
                subscribed_reported = false;
                let _ = connected.send(true);
                tracing::info!(session, "broker session up");
                if tx.send(LinkEvent::Connected { session }).await.is_err() {
                    return;
                }
                if ungranted.is_empty() {
                    subscribed_reported = true;
                    Some(LinkEvent::Subscribed { session })
                } else {
                    None
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => Some(LinkEvent::Message {
                topic: p.topic,
                payload: p.payload.to_vec(),
                retain: p.retain,
            }),
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let asked = pending.pop_front().unwrap_or_default();
                let mut refused = Vec::new();
                for (code, (topic, qos)) in ack.return_codes.iter().zip(asked) {
                    if matches!(code, SubscribeReasonCode::Failure) {
                        tracing::error!(topic, "broker refused subscription");
                        if tx
                            .send(LinkEvent::SubscribeRefused {
                                topic: topic.clone(),
                            })
                            .await
                            .is_err()
                        {
                            return;
                        }
                        refused.push((topic, qos));
                    } else {
                        ungranted.retain(|t| *t != topic);
                    }
                }
                if !refused.is_empty() {
                    let at = tokio::time::Instant::now() + refusals.next_delay();
                    match &mut retry {
                        Some((_, filters)) => filters.extend(refused),
                        None => retry = Some((at, refused)),
                    }
                }
                if ungranted.is_empty() && !subscribed_reported {
                    subscribed_reported = true;
                    tracing::debug!(session, "subscriptions granted");
                    Some(LinkEvent::Subscribed { session })
                } else {
                    None
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                disconnecting = true;
                None
            }
            Ok(_) => None,
            Err(e) => {
                let _ = connected.send(false);
                if disconnecting {
                    return;
                }
                let reason = e.to_string();
                tracing::warn!(%reason, "broker session down");
                if tx.send(LinkEvent::Disconnected { reason }).await.is_err() {
                    return;
                }
                let delay = backoff.next_delay();
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                None
            }
        };
        if let Some(event) = event
            && tx.send(event).await.is_err()
        {
            return;
        }
    }
}

/// Queues one SUBSCRIBE for `filters` and remembers what it asked for.
fn subscribe(
    client: &AsyncClient,
    pending: &mut VecDeque<Vec<(String, QoS)>>,
    filters: Vec<(String, QoS)>,
) {
    let request = filters
        .iter()
        .map(|(topic, qos)| SubscribeFilter::new(topic.clone(), *qos));
    match client.try_subscribe_many(request) {
        Ok(()) => pending.push_back(filters),
        Err(e) => tracing::error!(error = %e, "could not queue subscriptions"),
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

//! The one MQTT test client of the workspace, in two forms over one event
//! loop ([`drive`]): [`MqttClient`], blocking, on its own thread (end-to-end
//! tests and chaos drills without a runtime of their own), and [`Client`],
//! async, on the test's tokio runtime (the authority's and the collector's
//! integration tests). Both subscribe on every CONNACK, one filter per
//! SUBSCRIBE, and are ready only once the broker answered every one of the
//! first session (granted or refused, recorded): a test never publishes
//! into a subscription that is not in place yet, and never sleeps for it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS, SubscribeReasonCode};
use tokio::sync::mpsc;

use crate::broker::{Broker, ClientIdentity};

/// The largest packet a test client sends or accepts: above every mctc
/// message, so the oversized inputs tests send on purpose get out.
const TEST_MAX_PACKET: usize = 1 << 20;

/// How long a client waits for its subscriptions.
const READY_WITHIN: Duration = Duration::from_secs(15);

/// Drives one client's event loop until `stop` says so: subscribes to
/// `filters` on every CONNACK, calls `ready` once with the refused filters
/// when the first session's SUBACKs are in, hands every publish to
/// `received`. A lost connection is retried after 100 ms (rumqttc
/// reconnects when polled again).
async fn drive(
    mut eventloop: EventLoop,
    subscriber: AsyncClient,
    filters: Vec<String>,
    ready: impl FnOnce(Vec<String>),
    mut received: impl FnMut(Received),
    stop: impl Fn() -> bool,
) {
    let mut ready = Some(ready);
    let mut refused = Vec::new();
    let mut answered = 0;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                for filter in &filters {
                    let _ = subscriber.subscribe(filter, QoS::AtLeastOnce).await;
                }
                if filters.is_empty()
                    && let Some(ready) = ready.take()
                {
                    ready(Vec::new());
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                for code in &ack.return_codes {
                    if let Some(filter) = filters.get(answered)
                        && matches!(code, SubscribeReasonCode::Failure)
                    {
                        refused.push(filter.clone());
                    }
                    answered += 1;
                }
                if answered >= filters.len()
                    && let Some(ready) = ready.take()
                {
                    ready(std::mem::take(&mut refused));
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                received((p.topic, p.payload.to_vec(), p.retain));
            }
            Ok(_) => {}
            // Not synchronisation: the pause between reconnection attempts.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
        if stop() {
            return;
        }
    }
}

/// A fresh client id for `cn`: two clients of one identity never take
/// over each other's session.
fn client_id(cn: &str) -> String {
    let mut suffix = [0u8; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut suffix)
        .expect("system random");
    format!("{cn}-test-{}", hex::encode(suffix))
}

/// A received message: topic, payload, retain flag.
pub type Received = (String, Vec<u8>, bool);

/// A plain MQTT client (its own thread and runtime) with broker identity
/// `cn`, recording what it receives and when it arrived.
#[derive(Debug)]
pub struct MqttClient {
    client: rumqttc::AsyncClient,
    received: Arc<Mutex<Vec<(Instant, Received)>>>,
    refused: Arc<Mutex<Vec<String>>>,
    /// Set on drop: the client thread ends (it otherwise reconnects after
    /// a broker restart and subscribes again, as a monitor would).
    closed: Arc<AtomicBool>,
    _thread: std::thread::JoinHandle<()>,
}

impl Drop for MqttClient {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
    }
}

impl MqttClient {
    /// Connects and subscribes, panicking unless the broker granted every
    /// subscription (a refused one would otherwise just hear nothing).
    pub fn connect(broker: &Broker, cn: &str, client_id: &str, filters: &[&str]) -> MqttClient {
        let client = MqttClient::try_connect(broker, cn, client_id, filters)
            .expect("test MQTT client connected and subscribed");
        let refused = client.refused();
        assert!(
            refused.is_empty(),
            "the broker refused {cn} the subscriptions {refused:?} (use mctc_tests::OBSERVER to read what flows)"
        );
        client
    }

    /// Connects, subscribes to `filters` and returns once the broker
    /// acknowledged the subscriptions (within 10 s).
    pub fn try_connect(
        broker: &Broker,
        cn: &str,
        client_id: &str,
        filters: &[&str],
    ) -> Result<MqttClient, String> {
        let identity = broker.client_identity(cn).map_err(|e| e.to_string())?;
        MqttClient::try_connect_with(broker, &identity, client_id, filters)
    }

    /// Connects with `identity` as it is (no rights granted by the harness),
    /// subscribes to `filters` one by one and returns once the broker
    /// answered every subscription (within 10 s), granted or refused
    /// ([`MqttClient::refused`]).
    pub fn try_connect_with(
        broker: &Broker,
        identity: &ClientIdentity,
        client_id: &str,
        filters: &[&str],
    ) -> Result<MqttClient, String> {
        let mut options = broker
            .mqtt_options(client_id, identity)
            .map_err(|e| e.to_string())?;
        options.set_max_packet_size(1 << 20, 1 << 20);
        let refused = Arc::new(Mutex::new(Vec::new()));
        let refusals = Arc::clone(&refused);
        let (client, eventloop) = rumqttc::AsyncClient::new(options, 64);
        let received = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&received);
        let closed = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&closed);
        let subscriber = client.clone();
        let filters: Vec<String> = filters.iter().map(|f| (*f).to_owned()).collect();
        let thread = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(drive(
                eventloop,
                subscriber,
                filters,
                move |refused| {
                    if let Ok(mut r) = refusals.lock() {
                        *r = refused;
                    }
                    let _ = ready_tx.send(());
                },
                move |received| {
                    if let Ok(mut sink) = sink.lock() {
                        sink.push((Instant::now(), received));
                    }
                },
                move || stopped.load(Ordering::Acquire),
            ));
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| format!("MQTT client {client_id} did not subscribe within 10 s"))?;
        Ok(MqttClient {
            client,
            received,
            refused,
            closed,
            _thread: thread,
        })
    }

    /// The filters the broker refused (of the first session).
    pub fn refused(&self) -> Vec<String> {
        self.refused.lock().map(|r| r.clone()).unwrap_or_default()
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
        self.stamped().into_iter().map(|(_, r)| r).collect()
    }

    /// Everything received, with its arrival time.
    pub fn stamped(&self) -> Vec<(Instant, Received)> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Payloads on `topic` that arrived at or after `since`, with their
    /// arrival times.
    pub fn since(&self, topic: &str, since: Instant) -> Vec<(Instant, Vec<u8>)> {
        self.stamped()
            .into_iter()
            .filter(|(at, (t, _, _))| *at >= since && t == topic)
            .map(|(at, (_, payload, _))| (at, payload))
            .collect()
    }

    /// When the last message on `topic` at or before `until` arrived.
    pub fn last_before(&self, topic: &str, until: Instant) -> Option<Instant> {
        self.stamped()
            .into_iter()
            .filter(|(at, (t, _, _))| *at <= until && t == topic)
            .map(|(at, _)| at)
            .max()
    }

    pub fn received_on(&self, topic: &str) -> Vec<Vec<u8>> {
        self.received()
            .into_iter()
            .filter(|(t, _, _)| t == topic)
            .map(|(_, p, _)| p)
            .collect()
    }
}

/// An async MQTT client on the test's runtime that keeps what it receives
/// in an inbox: a test takes the next message on a topic (others wait
/// their turn) or everything within a window.
#[derive(Debug)]
pub struct Client {
    /// The rumqttc client (for what the helpers below do not cover).
    pub client: AsyncClient,
    inbox: VecDeque<Received>,
    rx: mpsc::UnboundedReceiver<Received>,
    refused: Vec<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Connects with the rights the harness gives `cn`
    /// ([`Broker::client_identity`]) and subscribes to `filters`; returns
    /// once the broker answered every subscription.
    pub async fn connect(broker: &Broker, cn: &str, filters: &[&str]) -> Client {
        let identity = broker.client_identity(cn).expect("client identity");
        Client::connect_with(broker, cn, &identity, filters).await
    }

    /// Connects with `identity` as it is (no rights granted by the harness).
    pub async fn connect_with(
        broker: &Broker,
        cn: &str,
        identity: &ClientIdentity,
        filters: &[&str],
    ) -> Client {
        let mut options = broker
            .mqtt_options(&client_id(cn), identity)
            .expect("MQTT options");
        options.set_max_packet_size(TEST_MAX_PACKET, TEST_MAX_PACKET);
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let mut network = eventloop.network_options();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let filters: Vec<String> = filters.iter().map(|f| (*f).to_owned()).collect();
        let task = tokio::spawn(drive(
            eventloop,
            client.clone(),
            filters,
            move |refused| {
                let _ = ready_tx.send(refused);
            },
            move |received| {
                let _ = tx.send(received);
            },
            || false,
        ));
        let refused = tokio::time::timeout(READY_WITHIN, ready_rx)
            .await
            .expect("MQTT client subscribed within 15 s")
            .expect("MQTT client task running");
        Client {
            client,
            inbox: VecDeque::new(),
            rx,
            refused,
            task,
        }
    }

    /// The filters the broker refused (of the first session).
    pub fn refused(&self) -> &[String] {
        &self.refused
    }

    /// Publishes at QoS 1 (queued in the client; no broker ack awaited).
    pub async fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .expect("publish queued");
    }

    /// The next message on any topic, or `None` after `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Received> {
        if let Some(m) = self.inbox.pop_front() {
            return Some(m);
        }
        tokio::time::timeout(wait, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next message on `topic` (earlier ones on other topics stay in
    /// the inbox), or `None` after `wait`.
    pub async fn next_on(&mut self, topic: &str, wait: Duration) -> Option<Vec<u8>> {
        self.next_with(topic, wait).await.map(|(p, _)| p)
    }

    /// Like [`Client::next_on`], with the retain flag.
    pub async fn next_with(&mut self, topic: &str, wait: Duration) -> Option<(Vec<u8>, bool)> {
        if let Some(i) = self.inbox.iter().position(|(t, _, _)| t == topic) {
            return self.inbox.remove(i).map(|(_, p, r)| (p, r));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((t, p, r))) if t == topic => return Some((p, r)),
                Ok(Some(other)) => self.inbox.push_back(other),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Everything received within `window` (the inbox first).
    pub async fn drain(&mut self, window: Duration) -> Vec<Received> {
        let mut out: Vec<Received> = self.inbox.drain(..).collect();
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            out.push(m);
        }
        out
    }

    /// Forgets everything received on `topic` so far.
    pub fn clear(&mut self, topic: &str) {
        while let Ok(m) = self.rx.try_recv() {
            self.inbox.push_back(m);
        }
        self.inbox.retain(|(t, _, _)| t != topic);
    }
}

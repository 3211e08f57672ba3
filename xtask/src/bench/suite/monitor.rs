//! A monitoring client (broker identity `mctc-monitor`: read-only status,
//! alerts and heartbeats) that timestamps every message on arrival.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mctc_tests::Broker;

/// A received message: arrival time, topic, payload.
pub type Stamped = (Instant, String, Vec<u8>);

#[derive(Debug)]
pub struct Monitor {
    received: Arc<Mutex<Vec<Stamped>>>,
    _thread: std::thread::JoinHandle<()>,
}

impl Monitor {
    /// Connects, subscribes to `filters` and returns once the broker
    /// acknowledged the subscriptions.
    pub fn connect(broker: &Broker, filters: &[&str]) -> Result<Monitor, String> {
        let identity = broker.identity("mctc-monitor").map_err(|e| e.to_string())?;
        let mut options = broker
            .mqtt_options("bench-monitor", &identity)
            .map_err(|e| e.to_string())?;
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 64);
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        let filters: Vec<String> = filters.iter().map(|f| (*f).to_owned()).collect();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let mut ready = Some(ready_tx);
                loop {
                    match eventloop.poll().await {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                            for filter in &filters {
                                let _ = client.subscribe(filter, rumqttc::QoS::AtMostOnce).await;
                            }
                        }
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                            if let Some(ready) = ready.take() {
                                let _ = ready.send(());
                            }
                        }
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                            let now = Instant::now();
                            if let Ok(mut sink) = sink.lock() {
                                sink.push((now, p.topic, p.payload.to_vec()));
                            }
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
            .map_err(|_| "the monitor client did not subscribe within 10 s".to_owned())?;
        Ok(Monitor {
            received,
            _thread: thread,
        })
    }

    /// Messages on `topic` received at or after `since`.
    pub fn since(&self, topic: &str, since: Instant) -> Vec<(Instant, Vec<u8>)> {
        self.received
            .lock()
            .map(|all| {
                all.iter()
                    .filter(|(at, t, _)| *at >= since && t == topic)
                    .map(|(at, _, p)| (*at, p.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The arrival of the last message on `topic` at or before `until`.
    pub fn last_before(&self, topic: &str, until: Instant) -> Option<Instant> {
        self.received.lock().ok().and_then(|all| {
            all.iter()
                .filter(|(at, t, _)| *at <= until && t == topic)
                .map(|(at, _, _)| *at)
                .max()
        })
    }
}

//! Live state from the broker: the latest retained status of each device
//! (`mctc/v1/dev/+/status`) and the latest collector alerts
//! (`mctc/v1/collector/alerts`), heard with the monitor identity. Kept in
//! memory, bounded, and fanned out to pages as server-sent events.
//!
//! The topic's device id must match the status's `device` field and be a
//! valid id; anything else is dropped and counted, never shown.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use mctc_service::BrokerConfig;
use mctc_service::link::{Link, LinkEvent, LinkOptions};
use mctc_shim::DeviceId;
use mctc_shim::api::{GateStatus, StatusMessage};
use rumqttc::QoS;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Devices whose live status is kept; statuses of further devices are
/// dropped (counted in [`LiveSnapshot::dropped`]).
pub const MAX_DEVICES: usize = 200_000;
/// Alerts kept, newest first.
pub const MAX_ALERTS: usize = 100;
/// Events buffered per SSE subscriber; a slower page misses events and is
/// told to reload.
pub const EVENT_BUFFER: usize = 1024;

const STATUS_FILTER: &str = "mctc/v1/dev/+/status";
const ALERT_TOPIC: &str = "mctc/v1/collector/alerts";
const HEARTBEAT_TOPIC: &str = "mctc/v1/fleet/heartbeat";

/// A device's gate as its latest status says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceLive {
    /// The device.
    pub device: String,
    /// `open`, `closed`, `contained`, `revoked` or `offline`.
    pub state: GateStatus,
    /// The close reason (`artifact-valid` when open).
    pub reason: String,
    /// The operator's reason, refusal code or heartbeat seq, if any.
    pub detail: Option<String>,
    /// Whether the agent answers.
    pub online: bool,
    /// The agent's wall clock when it published, Unix ms.
    pub status_wall_ms: u64,
    /// When the console heard it, Unix ms.
    pub heard_ms: u64,
    /// The last fleet heartbeat seq the device heard.
    pub heartbeat_seq: Option<u64>,
    /// The device's last attestation: verdict name.
    pub last_attestation: Option<String>,
    /// How long before the status that attestation was, ms.
    pub last_attestation_ago_ms: Option<u64>,
    /// Lineage records not yet acknowledged by the collector.
    pub lineage_backlog: Option<u64>,
}

/// A collector alert as published (only the fields shown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertLive {
    /// The device.
    pub device: String,
    /// Anomaly kind name.
    pub kind: String,
    /// The seq, if any.
    #[serde(default)]
    pub seq: Option<u64>,
    /// One line.
    #[serde(default)]
    pub detail: String,
    /// How many in the interval.
    #[serde(default)]
    pub count: u64,
    /// First seen, Unix ms.
    #[serde(default)]
    pub first_seen_ms: u64,
}

/// One change pushed to pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveEvent {
    /// A device's status changed.
    Device(DeviceLive),
    /// A new alert.
    Alert(AlertLive),
}

#[derive(Debug, Default)]
struct State {
    devices: HashMap<String, DeviceLive>,
    alerts: VecDeque<AlertLive>,
    connected: bool,
    last_heartbeat_ms: Option<u64>,
    dropped: u64,
}

/// What the pages read.
#[derive(Debug, Clone, Default)]
pub struct LiveSnapshot {
    /// Whether a broker is configured at all.
    pub enabled: bool,
    /// Whether the monitor link is up and subscribed.
    pub connected: bool,
    /// When the console last heard a fleet heartbeat (arrival, Unix ms).
    pub last_heartbeat_ms: Option<u64>,
    /// Statuses dropped: invalid, mismatched topic, or over [`MAX_DEVICES`].
    pub dropped: u64,
    /// Alerts, newest first.
    pub alerts: Vec<AlertLive>,
}

/// The live state, shared by the MQTT task and the request handlers.
#[derive(Debug)]
pub struct Live {
    enabled: bool,
    state: Mutex<State>,
    events: broadcast::Sender<LiveEvent>,
}

/// Unix ms now (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Live {
    /// Empty live state; `enabled` says whether a broker feeds it.
    pub fn new(enabled: bool) -> Arc<Live> {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Arc::new(Live {
            enabled,
            state: Mutex::new(State::default()),
            events,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update is a single insert or push: a panic elsewhere cannot
        // leave the maps half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A receiver of every later change.
    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.events.subscribe()
    }

    /// One device's live status.
    pub fn device(&self, id: &str) -> Option<DeviceLive> {
        self.state().devices.get(id).cloned()
    }

    /// Several devices' live status, in the order asked.
    pub fn devices<'a>(&self, ids: impl Iterator<Item = &'a str>) -> Vec<Option<DeviceLive>> {
        let state = self.state();
        ids.map(|id| state.devices.get(id).cloned()).collect()
    }

    /// Every device's live status (dashboard aggregates).
    pub fn all_devices(&self) -> Vec<DeviceLive> {
        self.state().devices.values().cloned().collect()
    }

    /// Link state and alerts.
    pub fn snapshot(&self) -> LiveSnapshot {
        let state = self.state();
        LiveSnapshot {
            enabled: self.enabled,
            connected: state.connected,
            last_heartbeat_ms: state.last_heartbeat_ms,
            dropped: state.dropped,
            alerts: state.alerts.iter().cloned().collect(),
        }
    }

    /// Takes in one status message heard on `topic`; `false` if dropped.
    pub fn on_status(&self, topic: &str, payload: &[u8], heard_ms: u64) -> bool {
        let Some(device) = status_topic_device(topic) else {
            self.state().dropped += 1;
            return false;
        };
        if payload.is_empty() {
            // A cleared retained message: the device's status was removed.
            self.state().devices.remove(device);
            return true;
        }
        let Some(live) = parse_status(device, payload, heard_ms) else {
            tracing::debug!(
                device,
                "status dropped: does not parse or names another device"
            );
            self.state().dropped += 1;
            return false;
        };
        {
            let mut state = self.state();
            if state.devices.len() >= MAX_DEVICES && !state.devices.contains_key(device) {
                state.dropped += 1;
                return false;
            }
            if state.devices.get(device) == Some(&live) {
                return true;
            }
            state.devices.insert(device.to_owned(), live.clone());
        }
        // No subscriber is not an error.
        let _ = self.events.send(LiveEvent::Device(live));
        true
    }

    /// Takes in one alert; `false` if dropped.
    pub fn on_alert(&self, payload: &[u8]) -> bool {
        let Ok(alert) = serde_json::from_slice::<AlertLive>(payload) else {
            self.state().dropped += 1;
            return false;
        };
        if DeviceId::new(&alert.device).is_err() {
            self.state().dropped += 1;
            return false;
        }
        {
            let mut state = self.state();
            state.alerts.push_front(alert.clone());
            state.alerts.truncate(MAX_ALERTS);
        }
        let _ = self.events.send(LiveEvent::Alert(alert));
        true
    }

    fn set_connected(&self, connected: bool) {
        self.state().connected = connected;
    }

    fn on_heartbeat(&self, heard_ms: u64) {
        self.state().last_heartbeat_ms = Some(heard_ms);
    }

    /// Follows the broker with the monitor identity until `shutdown`.
    pub async fn follow(
        self: Arc<Self>,
        broker: BrokerConfig,
        shutdown: crate::shutdown::Shutdown,
    ) -> Result<(), mctc_service::ServiceError> {
        let options = LinkOptions::new(format!("mctc-console-{}", std::process::id()))
            .subscribe(STATUS_FILTER, QoS::AtLeastOnce)
            .subscribe(ALERT_TOPIC, QoS::AtLeastOnce)
            .subscribe(HEARTBEAT_TOPIC, QoS::AtMostOnce);
        let mut link = Link::start(&broker, options)?;
        let mut shutdown = shutdown;
        loop {
            let event = tokio::select! {
                () = shutdown.wait() => break,
                event = link.recv() => event,
            };
            let Some(event) = event else { break };
            match event {
                LinkEvent::Subscribed { session } => {
                    self.set_connected(true);
                    tracing::info!(session, "console subscribed to device status and alerts");
                }
                LinkEvent::Disconnected { reason } => {
                    self.set_connected(false);
                    tracing::warn!(%reason, "broker link down");
                }
                LinkEvent::Message { topic, payload, .. } => {
                    let now = now_ms();
                    if topic == ALERT_TOPIC {
                        self.on_alert(&payload);
                    } else if topic == HEARTBEAT_TOPIC {
                        self.on_heartbeat(now);
                    } else {
                        self.on_status(&topic, &payload, now);
                    }
                }
                LinkEvent::SubscribeRefused { topic } => {
                    tracing::error!(%topic, "broker refused a subscription; is the console's certificate the monitor identity (mctc-monitor)?");
                }
                LinkEvent::Connected { .. } => {}
            }
        }
        link.shutdown(std::time::Duration::from_secs(1)).await;
        Ok(())
    }
}

/// The device id in `mctc/v1/dev/{id}/status`, if valid.
fn status_topic_device(topic: &str) -> Option<&str> {
    let id = topic
        .strip_prefix("mctc/v1/dev/")?
        .strip_suffix("/status")?;
    DeviceId::new(id).ok().map(|_| id)
}

fn parse_status(device: &str, payload: &[u8], heard_ms: u64) -> Option<DeviceLive> {
    let message: StatusMessage = serde_json::from_slice(payload).ok()?;
    Some(match message {
        StatusMessage::Online(status) => {
            if status.device != device {
                return None;
            }
            DeviceLive {
                device: device.to_owned(),
                state: status.state,
                reason: status.reason,
                detail: status.detail,
                online: status.online,
                status_wall_ms: status.wall_ms,
                heard_ms,
                heartbeat_seq: status.heartbeat_seq,
                last_attestation: status
                    .last_attestation
                    .as_ref()
                    .map(|a| a.verdict.name().to_owned()),
                last_attestation_ago_ms: status.last_attestation.as_ref().map(|a| a.ago_ms),
                lineage_backlog: Some(status.lineage.backlog),
            }
        }
        StatusMessage::Offline(status) => {
            if status.device != device {
                return None;
            }
            DeviceLive {
                device: device.to_owned(),
                state: status.state,
                reason: status.reason,
                detail: None,
                online: false,
                status_wall_ms: status.wall_ms,
                heard_ms,
                heartbeat_seq: None,
                last_attestation: None,
                last_attestation_ago_ms: None,
                lineage_backlog: None,
            }
        }
    })
}

//! Publishing: the [`Publisher`] seam between the workers and the MQTT
//! link, and the outbox pump that turns queued controls and registry
//! records into signed messages.
//!
//! The outbox exists so that a state change and the message announcing it
//! commit together, whoever made the change (a worker, or the CLI while
//! `run` is running): any running instance publishes what is queued.

use mctc_service::dynsec;
use mctc_service::link::{AsyncClient, QoS};
use mctc_shim::topics::DeviceTopic;
use tokio::sync::watch;

use crate::issuer::Issuer;
use crate::now::Now;
use crate::store::{OutboxItem, Store, StoreError};

/// A claim on outbox rows lasts this long; a crashed instance's rows are
/// then published by another.
pub const CLAIM_MS: u64 = 10_000;
/// Rows claimed per round.
const BATCH: usize = 64;

/// A message to publish (QoS 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Full topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Retained on the broker.
    pub retain: bool,
}

/// Where the workers send their messages.
pub trait Publisher: Send {
    /// Queues `message`; `false` if it could not be queued (full queue,
    /// link stopped).
    fn publish(&self, message: Outgoing) -> bool;

    /// Whether the broker session is up.
    fn connected(&self) -> bool;
}

/// The MQTT link's client.
#[derive(Debug, Clone)]
pub struct LinkPublisher {
    client: AsyncClient,
    connected: watch::Receiver<bool>,
}

impl LinkPublisher {
    /// Publishes through `client`; `connected` follows the link.
    pub fn new(client: AsyncClient, connected: watch::Receiver<bool>) -> LinkPublisher {
        LinkPublisher { client, connected }
    }
}

impl Publisher for LinkPublisher {
    fn publish(&self, m: Outgoing) -> bool {
        // Never block a worker on the network: a full queue is "not sent",
        // and the device asks again.
        match self
            .client
            .try_publish(m.topic.clone(), QoS::AtLeastOnce, m.retain, m.payload)
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(topic = %m.topic, error = %e, "publish not queued");
                false
            }
        }
    }

    fn connected(&self) -> bool {
        *self.connected.borrow()
    }
}

/// The correlation tag of an outbox row's broker commands.
fn broker_tag(row: i64) -> String {
    format!("outbox-{row}")
}

/// Publishes what the outbox holds, while connected. Rows are deleted once
/// their message is queued for the broker, except the device's broker
/// rights, which are deleted when the broker confirms them
/// ([`broker_reply`]); until then the row's claim runs out and it is sent
/// again (the commands are idempotent). A row whose message could not be
/// signed is dropped with an error (it would fail forever).
pub fn pump(
    store: &mut dyn Store,
    issuer: &Issuer,
    publisher: &dyn Publisher,
    now: &Now,
) -> Result<usize, StoreError> {
    let mut sent = 0;
    while publisher.connected() {
        let items = store.claim_outbox(BATCH, CLAIM_MS, now)?;
        if items.is_empty() {
            break;
        }
        let mut done = Vec::with_capacity(items.len());
        let full = items.len() == BATCH;
        for item in items {
            let id = item.id();
            let message = match &item {
                OutboxItem::Skip { .. } => {
                    done.push(id);
                    continue;
                }
                OutboxItem::Control {
                    device,
                    seq,
                    action,
                    reason,
                    wall_ms,
                    ..
                } => issuer
                    .control(device, *seq, *action, reason, wall_ms / 1000)
                    .map(|payload| Outgoing {
                        topic: DeviceTopic::Control.topic(device).to_string(),
                        payload,
                        retain: true,
                    }),
                OutboxItem::Broker { device, grant, .. } => {
                    let command = if *grant {
                        dynsec::grant
                    } else {
                        dynsec::revoke
                    };
                    let message = Outgoing {
                        topic: dynsec::CONTROL_TOPIC.to_owned(),
                        payload: command(device.as_str(), &broker_tag(id)),
                        retain: false,
                    };
                    if publisher.publish(message) {
                        tracing::info!(%device, grant, "broker rights sent");
                        sent += 1;
                    }
                    continue;
                }
                OutboxItem::Registry { record, .. } => issuer
                    .registry(record, now.wall_secs())
                    .map(|payload| Outgoing {
                        topic: DeviceTopic::Registry.topic(&record.device).to_string(),
                        payload,
                        retain: true,
                    }),
            };
            match message {
                Ok(message) => {
                    let topic = message.topic.clone();
                    if publisher.publish(message) {
                        tracing::info!(%topic, "published");
                        sent += 1;
                        done.push(id);
                    }
                }
                Err(e) => {
                    tracing::error!(row = id, error = %e, "outbox message cannot be signed; dropped");
                    done.push(id);
                }
            }
        }
        store.ack_outbox(&done)?;
        if !full {
            break;
        }
    }
    Ok(sent)
}

/// Handles a reply of the broker's dynamic-security plugin: the outbox rows
/// whose every command it confirmed are deleted. A refused command is an
/// error in the log, and its row is sent again when its claim runs out.
pub fn broker_reply(store: &mut dyn Store, payload: &[u8]) -> Result<usize, StoreError> {
    let reply = match dynsec::Reply::parse(payload) {
        Ok(reply) => reply,
        Err(e) => {
            tracing::warn!(error = %e, "broker reply dropped");
            return Ok(0);
        }
    };
    let mut done = Vec::new();
    for (tag, ok) in reply.by_tag() {
        let Some(row) = tag.strip_prefix("outbox-").and_then(|r| r.parse().ok()) else {
            continue;
        };
        if ok {
            done.push(row);
        } else {
            tracing::error!(
                row,
                responses = ?reply.responses,
                "the broker refused a device's rights; retried when the claim runs out"
            );
        }
    }
    store.ack_outbox(&done)?;
    Ok(done.len())
}

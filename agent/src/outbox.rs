//! Where the agent's MQTT publishes go: the broker link in production, a
//! recorder in unit tests (the test seam is this trait, never a feature
//! flag).

use std::future::Future;

use mctc_service::link::{AsyncClient, QoS};

pub trait Outbox: Clone + Send + Sync + 'static {
    /// Queues a publish without waiting. `false`: not queued (queue full or
    /// link gone); the caller's own retry or resend logic covers it.
    fn try_publish(&self, topic: &str, payload: Vec<u8>, qos: QoS, retain: bool) -> bool;

    /// Queues a publish, waiting for room in the queue.
    fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        qos: QoS,
        retain: bool,
    ) -> impl Future<Output = bool> + Send;
}

impl Outbox for AsyncClient {
    fn try_publish(&self, topic: &str, payload: Vec<u8>, qos: QoS, retain: bool) -> bool {
        match AsyncClient::try_publish(self, topic, qos, retain, payload) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(topic, error = %e, "publish not queued");
                false
            }
        }
    }

    fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        qos: QoS,
        retain: bool,
    ) -> impl Future<Output = bool> + Send {
        let client = self.clone();
        let topic = topic.to_owned();
        async move {
            match client.publish(&topic, qos, retain, payload).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(topic, error = %e, "publish not queued");
                    false
                }
            }
        }
    }
}

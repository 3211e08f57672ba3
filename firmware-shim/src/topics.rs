//! MQTT topic names (prefix `mctc/v1`), built into fixed-capacity strings
//! and parsed back.
//!
//! | topic | from → to | payload |
//! |---|---|---|
//! | `mctc/v1/enroll/{dev}/request` | agent → authority | [`crate::messages::EnrollRequest`] |
//! | `mctc/v1/enroll/{dev}/challenge` | authority → agent | [`crate::messages::EnrollChallenge`] |
//! | `mctc/v1/enroll/{dev}/proof` | agent → authority | [`crate::messages::EnrollProof`] |
//! | `mctc/v1/enroll/{dev}/result` | authority → agent | signed [`crate::messages::EnrollResult`] |
//! | `mctc/v1/dev/{dev}/nonce/req` | agent → authority | [`crate::messages::NonceRequest`] |
//! | `mctc/v1/dev/{dev}/nonce` | authority → agent | [`crate::messages::Nonce`] |
//! | `mctc/v1/dev/{dev}/evidence` | agent → authority | [`crate::messages::Evidence`] |
//! | `mctc/v1/dev/{dev}/artifact` | authority → agent | signed [`crate::artifact::Claims`] or signed [`crate::messages::Refusal`] |
//! | `mctc/v1/dev/{dev}/control` | authority → agent | signed [`crate::messages::Control`] |
//! | `mctc/v1/dev/{dev}/lineage` | agent → collector | [`crate::messages::LineageBatch`] |
//! | `mctc/v1/dev/{dev}/lineage/ack` | collector → agent | signed [`crate::receipt::Receipt`] (or [`crate::messages::LineageAck`] while the collector holds nothing) |
//! | `mctc/v1/dev/{dev}/status` | agent → monitors | JSON (the agent's), retained |
//! | `mctc/v1/fleet/heartbeat` | authority → all | signed [`crate::messages::Heartbeat`] |
//! | `mctc/v1/registry/{dev}` | authority → collectors | signed [`crate::messages::RegistryRecord`], retained |
//!
//! A signed message on the artifact topic is told apart by its COSE content
//! type: try [`crate::artifact::verify_artifact`] and, on
//! [`crate::error::EnvelopeError::WrongContentType`], the refusal verifier.

use crate::id::DeviceId;
use crate::limits::{MAX_DEVICE_ID_LEN, MAX_TOPIC_LEN};

/// The topic prefix of this wire version.
pub const PREFIX: &str = "mctc/v1";
/// The fleet heartbeat topic.
pub const HEARTBEAT: &str = "mctc/v1/fleet/heartbeat";

/// A topic name or filter.
pub type Topic = heapless::String<MAX_TOPIC_LEN>;

/// The per-device topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceTopic {
    /// `enroll/{dev}/request`
    EnrollRequest,
    /// `enroll/{dev}/challenge`
    EnrollChallenge,
    /// `enroll/{dev}/proof`
    EnrollProof,
    /// `enroll/{dev}/result`
    EnrollResult,
    /// `dev/{dev}/nonce/req`
    NonceRequest,
    /// `dev/{dev}/nonce`
    Nonce,
    /// `dev/{dev}/evidence`
    Evidence,
    /// `dev/{dev}/artifact`
    Artifact,
    /// `dev/{dev}/control`
    Control,
    /// `dev/{dev}/lineage`
    Lineage,
    /// `dev/{dev}/lineage/ack`
    LineageAck,
    /// `dev/{dev}/status`
    Status,
    /// `registry/{dev}`
    Registry,
}

const ENROLL: &str = "mctc/v1/enroll/";
const DEV: &str = "mctc/v1/dev/";
const REGISTRY: &str = "mctc/v1/registry/";
const LONGEST_HEAD: usize = ENROLL.len();
const LONGEST_TAIL: usize = "/challenge".len();
const _: () = assert!(LONGEST_HEAD + MAX_DEVICE_ID_LEN + LONGEST_TAIL <= MAX_TOPIC_LEN);

impl DeviceTopic {
    /// Every per-device topic.
    pub const ALL: [Self; 13] = [
        Self::EnrollRequest,
        Self::EnrollChallenge,
        Self::EnrollProof,
        Self::EnrollResult,
        Self::NonceRequest,
        Self::Nonce,
        Self::Evidence,
        Self::Artifact,
        Self::Control,
        Self::Lineage,
        Self::LineageAck,
        Self::Status,
        Self::Registry,
    ];

    /// The parts before and after the device id.
    const fn parts(self) -> (&'static str, &'static str) {
        match self {
            Self::EnrollRequest => (ENROLL, "/request"),
            Self::EnrollChallenge => (ENROLL, "/challenge"),
            Self::EnrollProof => (ENROLL, "/proof"),
            Self::EnrollResult => (ENROLL, "/result"),
            Self::NonceRequest => (DEV, "/nonce/req"),
            Self::Nonce => (DEV, "/nonce"),
            Self::Evidence => (DEV, "/evidence"),
            Self::Artifact => (DEV, "/artifact"),
            Self::Control => (DEV, "/control"),
            Self::Lineage => (DEV, "/lineage"),
            Self::LineageAck => (DEV, "/lineage/ack"),
            Self::Status => (DEV, "/status"),
            Self::Registry => (REGISTRY, ""),
        }
    }

    /// The topic for `device`.
    pub fn topic(self, device: &DeviceId) -> Topic {
        let (head, tail) = self.parts();
        concat(head, device.as_str(), tail)
    }

    /// The subscription filter for every device (`+` in place of the id).
    pub fn filter(self) -> Topic {
        let (head, tail) = self.parts();
        concat(head, "+", tail)
    }

    /// A shared-subscription filter (`$share/{group}/…`) so several
    /// service instances split the load; `None` if `group` is not a valid
    /// share name or the filter would not fit.
    pub fn shared_filter(self, group: &str) -> Option<Topic> {
        if group.is_empty() || group.contains(['/', '+', '#']) {
            return None;
        }
        let mut topic = Topic::new();
        for part in ["$share/", group, "/", self.filter().as_str()] {
            topic.push_str(part).ok()?;
        }
        Some(topic)
    }
}

#[expect(
    clippy::expect_used,
    reason = "invariant: MAX_TOPIC_LEN holds the longest head + device id + tail (const-asserted above)"
)]
fn concat(head: &str, middle: &str, tail: &str) -> Topic {
    let mut topic = Topic::new();
    for part in [head, middle, tail] {
        topic
            .push_str(part)
            .expect("topic capacity is const-asserted");
    }
    topic
}

/// Which per-device topic `topic` is, and for which device. `None` for
/// anything else (including the heartbeat topic and wildcards).
pub fn parse(topic: &str) -> Option<(DeviceTopic, DeviceId)> {
    DeviceTopic::ALL.into_iter().find_map(|which| {
        let (head, tail) = which.parts();
        let id = topic.strip_prefix(head)?.strip_suffix(tail)?;
        DeviceId::new(id).ok().map(|device| (which, device))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_for_every_kind() {
        let dev = DeviceId::new(&"d".repeat(64)).unwrap();
        for which in DeviceTopic::ALL {
            let topic = which.topic(&dev);
            assert!(topic.starts_with(PREFIX));
            assert_eq!(parse(&topic), Some((which, dev.clone())), "{topic}");
        }
    }

    #[test]
    fn names_match_the_design() {
        let dev = DeviceId::new("locker-1").unwrap();
        assert_eq!(
            DeviceTopic::NonceRequest.topic(&dev),
            "mctc/v1/dev/locker-1/nonce/req"
        );
        assert_eq!(
            DeviceTopic::LineageAck.topic(&dev),
            "mctc/v1/dev/locker-1/lineage/ack"
        );
        assert_eq!(
            DeviceTopic::EnrollChallenge.topic(&dev),
            "mctc/v1/enroll/locker-1/challenge"
        );
        assert_eq!(
            DeviceTopic::Registry.topic(&dev),
            "mctc/v1/registry/locker-1"
        );
        assert_eq!(DeviceTopic::Evidence.filter(), "mctc/v1/dev/+/evidence");
        assert_eq!(
            DeviceTopic::Evidence.shared_filter("authority").unwrap(),
            "$share/authority/mctc/v1/dev/+/evidence"
        );
        assert_eq!(DeviceTopic::Evidence.shared_filter("a/b"), None);
    }

    #[test]
    fn parse_rejects_foreign_and_malformed_topics() {
        for bad in [
            HEARTBEAT,
            "mctc/v1/dev/+/evidence",
            "mctc/v1/dev/a/b/evidence",
            "mctc/v1/dev/mctc-authority/evidence",
            "mctc/v2/dev/a/evidence",
            "mctc/v1/dev//evidence",
            "mctc/v1/dev/a/evidence/x",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}

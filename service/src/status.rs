//! The retained status of a fleet service instance (authority, collector)
//! on `mctc/v1/service/{role}/{instance}/status`, with a Last Will
//! `offline` on the same topic.
//!
//! The instance publishes `online` (retained, QoS 1) on every new session
//! and again when what it says changes (the authority's heartbeat
//! leadership); the broker publishes the Last Will `offline` (retained) if
//! the instance vanishes without a DISCONNECT, and the instance publishes
//! `offline` itself before a clean shutdown (a clean DISCONNECT discards
//! the will). A monitor subscribes to `mctc/v1/service/+/+/status`; only
//! the role's own broker identity may publish under its role
//! (`configs/mosquitto/dynamic-security.json`).

use serde::Serialize;

use crate::link::LinkOptions;

/// Version of the status JSON (`v`).
pub const STATUS_VERSION: u32 = 1;

/// Every instance's status topic, for monitors.
pub const ALL_STATUS_TOPICS: &str = "mctc/v1/service/+/+/status";

/// Which fleet service an instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Authority,
    Collector,
}

impl Role {
    /// The role's name in the topic and the JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Role::Authority => "authority",
            Role::Collector => "collector",
        }
    }
}

/// `online` or `offline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Online,
    Offline,
}

/// The status JSON. `leader` is the authority's heartbeat leadership (absent
/// for a collector, and in the Last Will, which cannot know it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceStatus {
    pub v: u32,
    pub state: State,
    pub role: Role,
    pub instance: String,
    pub version: String,
    /// Unix seconds when this process started.
    pub started: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<bool>,
}

/// The instance's identity, from which its topic and messages are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub role: Role,
    /// `[A-Za-z0-9_-]`, 1–32 characters (a topic level without wildcards).
    pub instance: String,
    pub version: String,
    pub started: u64,
}

impl Instance {
    /// `mctc/v1/service/{role}/{instance}/status`.
    pub fn topic(&self) -> String {
        format!(
            "mctc/v1/service/{}/{}/status",
            self.role.name(),
            self.instance
        )
    }

    /// The status in `state` as JSON bytes.
    pub fn status(&self, state: State, leader: Option<bool>) -> Vec<u8> {
        let status = ServiceStatus {
            v: STATUS_VERSION,
            state,
            role: self.role,
            instance: self.instance.clone(),
            version: self.version.clone(),
            started: self.started,
            leader,
        };
        // Serializing a struct of strings, integers and enums to JSON
        // cannot fail.
        serde_json::to_vec(&status).unwrap_or_default()
    }

    /// `options` with the Last Will `offline`, retained, on the topic.
    pub fn with_last_will(&self, options: LinkOptions) -> LinkOptions {
        options.last_will(self.topic(), self.status(State::Offline, None), true)
    }
}

/// Whether `instance` can be a topic level of a status topic.
pub fn valid_instance(instance: &str) -> bool {
    !instance.is_empty()
        && instance.len() <= 32
        && instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Unix seconds now (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_and_json_are_the_documented_ones() {
        let i = Instance {
            role: Role::Authority,
            instance: "a1".into(),
            version: "0.1.0".into(),
            started: 1_700_000_000,
        };
        assert_eq!(i.topic(), "mctc/v1/service/authority/a1/status");
        let online: serde_json::Value =
            serde_json::from_slice(&i.status(State::Online, Some(true))).unwrap();
        assert_eq!(
            online,
            serde_json::json!({"v": 1, "state": "online", "role": "authority", "instance": "a1",
                "version": "0.1.0", "started": 1_700_000_000u64, "leader": true})
        );
        let offline: serde_json::Value =
            serde_json::from_slice(&i.status(State::Offline, None)).unwrap();
        assert_eq!(offline["state"], "offline");
        assert!(offline.get("leader").is_none());
        assert!(!valid_instance("a/b") && !valid_instance("+") && !valid_instance(""));
        assert!(valid_instance("collector-1_a"));
    }
}

//! The broker's authorization of each device: Mosquitto's dynamic-security
//! plugin, driven over its `$CONTROL/dynamic-security/v1` topic.
//!
//! Why this and not Mosquitto's ACL file: the ACL file checks what a client
//! may *read* and *write*, but grants every SUBSCRIBE. A client holding any
//! certificate of the fleet CA could therefore join the services'
//! shared-subscription groups (`$share/mctc-authority/…`), be handed its share
//! of every device's requests, fail the read check and so make them vanish.
//! The dynamic-security plugin checks subscriptions too, against the full
//! filter including `$share/<group>/` (verified on Mosquitto 2.0.11), and
//! denies everything to a username it does not know. Its ACL topics have no
//! `%u` substitution, so every device gets a role of its own
//! ([`device_acls`]), created when the device is added and deleted when it is
//! revoked (which also disconnects it).
//!
//! This module only builds the command messages and reads the replies; the
//! authority's outbox publishes them and acknowledges its rows on the reply
//! (`authority/src/outbox.rs`), and the test harness grants its own devices
//! with the same commands.

use serde::{Deserialize, Serialize};

/// Where commands go.
pub const CONTROL_TOPIC: &str = "$CONTROL/dynamic-security/v1";
/// Where the plugin answers (to the client that sent the commands only).
pub const RESPONSE_TOPIC: &str = "$CONTROL/dynamic-security/v1/response";
/// The group every device belongs to; its role (shipped in
/// `configs/mosquitto/dynamic-security.json`) lets it read the heartbeat.
pub const DEVICE_GROUP: &str = "mctc-devices";

/// The role that holds one device's rights.
pub fn device_role(device: &str) -> String {
    format!("mctc-device/{device}")
}

/// One ACL entry of a dynamic-security role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Acl {
    /// `publishClientSend`, `publishClientReceive`, `subscribeLiteral`, …
    pub acltype: &'static str,
    /// Topic (or filter, for subscriptions).
    pub topic: String,
    /// Allow or deny.
    pub allow: bool,
}

/// What one device may do, topic by topic and direction by direction
/// (DESIGN.md's topic table): it sends its requests, evidence, lineage and
/// status; it receives the answers meant for it. It may subscribe to its own
/// subtrees (a subscription takes nothing from anyone; what it is delivered
/// is decided by the receive rules). Exact topics for everything it writes,
/// so a device can hold at most one retained message per topic it may write.
pub fn device_acls(device: &str) -> Vec<Acl> {
    let acl = |acltype, topic: String| Acl {
        acltype,
        topic,
        allow: true,
    };
    let send = [
        format!("mctc/v1/enroll/{device}/request"),
        format!("mctc/v1/enroll/{device}/proof"),
        format!("mctc/v1/dev/{device}/nonce/req"),
        format!("mctc/v1/dev/{device}/evidence"),
        format!("mctc/v1/dev/{device}/lineage"),
        format!("mctc/v1/dev/{device}/status"),
    ];
    let receive = [
        format!("mctc/v1/enroll/{device}/challenge"),
        format!("mctc/v1/enroll/{device}/result"),
        format!("mctc/v1/dev/{device}/nonce"),
        format!("mctc/v1/dev/{device}/artifact"),
        format!("mctc/v1/dev/{device}/control"),
        format!("mctc/v1/dev/{device}/lineage/ack"),
        format!("mctc/v1/registry/{device}"),
    ];
    let mut acls: Vec<Acl> = send
        .into_iter()
        .map(|t| acl("publishClientSend", t))
        .chain(receive.into_iter().map(|t| acl("publishClientReceive", t)))
        .collect();
    acls.push(acl("subscribePattern", format!("mctc/v1/dev/{device}/#")));
    acls.push(acl(
        "subscribePattern",
        format!("mctc/v1/enroll/{device}/#"),
    ));
    acls.push(acl(
        "subscribeLiteral",
        format!("mctc/v1/registry/{device}"),
    ));
    acls
}

#[derive(Debug, Serialize)]
struct RoleRef {
    rolename: String,
}

#[derive(Debug, Serialize)]
struct GroupRef {
    groupname: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(tag = "command", rename_all = "camelCase")]
enum Command {
    CreateRole {
        rolename: String,
        acls: Vec<Acl>,
        #[serde(rename = "correlationData")]
        correlation: String,
    },
    CreateClient {
        username: String,
        roles: Vec<RoleRef>,
        groups: Vec<GroupRef>,
        #[serde(rename = "correlationData")]
        correlation: String,
    },
    DeleteClient {
        username: String,
        #[serde(rename = "correlationData")]
        correlation: String,
    },
    DeleteRole {
        rolename: String,
        #[serde(rename = "correlationData")]
        correlation: String,
    },
}

#[derive(Debug, Serialize)]
struct Commands {
    commands: Vec<Command>,
}

fn encode(commands: Vec<Command>) -> Vec<u8> {
    // Serializing these plain structs of strings and booleans cannot fail.
    serde_json::to_vec(&Commands { commands }).unwrap_or_default()
}

/// The commands that let `device` connect with its certificate and use its
/// own topics. Every command carries `tag` as its correlation data, so the
/// reply can be matched to what asked for it. Idempotent: a role or client
/// that already exists is reported as such and counts as done
/// ([`Reply::done`]).
pub fn grant(device: &str, tag: &str) -> Vec<u8> {
    encode(vec![
        Command::CreateRole {
            rolename: device_role(device),
            acls: device_acls(device),
            correlation: tag.to_owned(),
        },
        Command::CreateClient {
            username: device.to_owned(),
            roles: vec![RoleRef {
                rolename: device_role(device),
            }],
            groups: vec![GroupRef {
                groupname: DEVICE_GROUP,
            }],
            correlation: tag.to_owned(),
        },
    ])
}

/// The commands that take every right from `device`. Deleting the client
/// also makes the broker disconnect it at once; when it connects again, its
/// certificate still opens a TLS session but it may neither publish nor
/// subscribe to anything.
pub fn revoke(device: &str, tag: &str) -> Vec<u8> {
    encode(vec![
        Command::DeleteClient {
            username: device.to_owned(),
            correlation: tag.to_owned(),
        },
        Command::DeleteRole {
            rolename: device_role(device),
            correlation: tag.to_owned(),
        },
    ])
}

/// The plugin's answer to one command.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CommandResult {
    /// The command answered.
    pub command: String,
    /// What went wrong, if anything.
    #[serde(default)]
    pub error: Option<String>,
    /// The correlation data the command carried.
    #[serde(default, rename = "correlationData")]
    pub correlation: Option<String>,
}

impl CommandResult {
    /// Whether the command left the broker in the state it asked for: it
    /// succeeded, or the state was already there (a repeated grant or
    /// revoke after a lost reply).
    pub fn done(&self) -> bool {
        match self.error.as_deref() {
            None => true,
            Some(e) => matches!(
                (self.command.as_str(), e),
                ("createRole", "Role already exists")
                    | ("createClient", "Client already exists")
                    | ("deleteClient", "Client not found")
                    | ("deleteRole", "Role not found")
            ),
        }
    }
}

/// A reply message from the plugin.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Reply {
    /// One result per command, in order.
    pub responses: Vec<CommandResult>,
}

/// A reply that is not the plugin's JSON.
#[derive(Debug, thiserror::Error)]
#[error("dynamic-security reply is not valid: {0}")]
pub struct ReplyError(#[from] serde_json::Error);

impl Reply {
    /// Parses a message from [`RESPONSE_TOPIC`].
    pub fn parse(bytes: &[u8]) -> Result<Reply, ReplyError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// The correlation tags of this reply, each with whether every command
    /// that carried it is [`CommandResult::done`].
    pub fn by_tag(&self) -> Vec<(String, bool)> {
        let mut tags: Vec<(String, bool)> = Vec::new();
        for result in &self.responses {
            let Some(tag) = &result.correlation else {
                continue;
            };
            match tags.iter_mut().find(|(t, _)| t == tag) {
                Some((_, ok)) => *ok &= result.done(),
                None => tags.push((tag.clone(), result.done())),
            }
        }
        tags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_names_only_the_devices_own_topics() {
        let acls = device_acls("pos-1");
        assert!(acls.iter().all(|a| a.topic.contains("/pos-1")));
        // Wildcards only in what it may subscribe to, never in what it may
        // write or be delivered.
        assert!(acls.iter().all(|a| a.acltype.starts_with("subscribe")
            || (!a.topic.contains('+') && !a.topic.contains('#'))));
        // It may not write what the fleet says to it.
        assert!(
            !acls
                .iter()
                .any(|a| a.acltype == "publishClientSend" && a.topic.ends_with("/lineage/ack"))
        );
        let json: serde_json::Value = serde_json::from_slice(&grant("pos-1", "7")).unwrap();
        assert_eq!(json["commands"][0]["command"], "createRole");
        assert_eq!(json["commands"][0]["rolename"], "mctc-device/pos-1");
        assert_eq!(json["commands"][1]["command"], "createClient");
        assert_eq!(json["commands"][1]["groups"][0]["groupname"], DEVICE_GROUP);
        assert_eq!(json["commands"][1]["correlationData"], "7");
        let json: serde_json::Value = serde_json::from_slice(&revoke("pos-1", "8")).unwrap();
        assert_eq!(json["commands"][0]["command"], "deleteClient");
        assert_eq!(json["commands"][1]["command"], "deleteRole");
    }

    #[test]
    fn replies_are_done_only_when_every_command_is() {
        // As Mosquitto 2.0.11 answers.
        let reply = Reply::parse(
            br#"{"responses":[{"command":"createRole","error":"Role already exists","correlationData":"8"},
            {"command":"createClient","correlationData":"8"},
            {"command":"deleteClient","error":"Client not found","correlationData":"9"},
            {"command":"deleteRole","error":"Internal error","correlationData":"9"},
            {"command":"getClient"}]}"#,
        )
        .unwrap();
        assert_eq!(
            reply.by_tag(),
            vec![("8".to_owned(), true), ("9".to_owned(), false)]
        );
        assert!(Reply::parse(b"not json").is_err());
        assert!(Reply::parse(br#"{"responses":7}"#).is_err());
    }
}

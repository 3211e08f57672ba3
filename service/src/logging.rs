//! One tracing setup for every binary: structured fields, level from
//! `MCTC_LOG` (then `RUST_LOG`), default `info`.
//!
//! Under systemd (`JOURNAL_STREAM` names the device and inode of our
//! stderr, as systemd sets it for a service whose output goes to the
//! journal) events go to journald over its native protocol, so each keeps
//! its priority and its fields (`DEVICE=`, `REASON=`, …, upper-cased) and
//! the events an operator alerts on carry a stable `MESSAGE_ID`
//! ([`MESSAGE_IDS`]; `journalctl MESSAGE_ID=…`). Otherwise, or if the
//! journal socket cannot be reached, plain lines on stderr (no colour when
//! not on a terminal).
//!
//! The journal socket is `/run/systemd/journal/socket`, or
//! `$MCTC_JOURNAL_SOCKET` (a test binds its own datagram socket there).
//! `tracing-journald` was not used: its socket path is fixed, and its field
//! prefixing and INFO → NOTICE mapping differ from what operators filter on.

use std::fmt::Write as _;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// systemd's journal socket.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
/// Overrides [`JOURNAL_SOCKET`].
pub const JOURNAL_SOCKET_ENV: &str = "MCTC_JOURNAL_SOCKET";

/// The `MESSAGE_ID` of each event operators alert on, by its message.
/// Stable: dashboards and `journalctl MESSAGE_ID=` rules rely on them; a
/// new event gets a new id (`systemd-id128 new`), an id is never reused.
pub const MESSAGE_IDS: [(&str, &str); 7] = [
    // mctc-agent
    ("gate opened", "20990fd1e0974f7fb99e72f12b9bfbe0"),
    ("gate closed", "a61ba49b1f8d4a5e95d9a910a9841d77"),
    ("gate contained", "bb0d660aa49c4f128d17e888ba4460ad"),
    ("device revoked", "7797490ef4184ad4b686070c823d79db"),
    // mctc-authority
    ("evidence refused", "1b315ac8ec424c098b0c14ea9cfac8b3"),
    (
        "device contained automatically",
        "c7e168fded0a4683aa08296ea92be0a8",
    ),
    ("enrollment refused", "aa24626be0b749ea8b6ae8c1b2ff382b"),
];

/// The `MESSAGE_ID` of an event with `message`, if it has one.
pub fn message_id(message: &str) -> Option<&'static str> {
    MESSAGE_IDS
        .iter()
        .find(|(m, _)| *m == message)
        .map(|(_, id)| *id)
}

/// The syslog priority of a level (`PRIORITY=`).
pub const fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

fn filter() -> EnvFilter {
    std::env::var("MCTC_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"))
}

/// Whether `JOURNAL_STREAM` (`DEV:INODE`) names our stderr.
fn stderr_is_journal() -> bool {
    let Some(expected) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    expected.to_str() == Some(format!("{}:{}", stat.st_dev, stat.st_ino).as_str())
}

pub fn init() {
    if stderr_is_journal() {
        let path = std::env::var_os(JOURNAL_SOCKET_ENV)
            .map_or_else(|| PathBuf::from(JOURNAL_SOCKET), PathBuf::from);
        if let Ok(journal) = Journald::connect(path) {
            // A second init (tests) is harmless; ignore the error it returns.
            let _ = tracing_subscriber::registry()
                .with(filter())
                .with(journal)
                .try_init();
            return;
        }
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}

/// A layer that sends each event to journald as one native-protocol
/// datagram.
#[derive(Debug)]
pub struct Journald {
    socket: UnixDatagram,
    path: PathBuf,
    identifier: String,
}

impl Journald {
    /// A layer sending to the journal socket at `path` (checked now).
    pub fn connect(path: PathBuf) -> std::io::Result<Journald> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(&path)?;
        let identifier = std::env::args_os()
            .next()
            .map(PathBuf::from)
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "mctc".to_owned());
        Ok(Journald {
            socket,
            path,
            identifier,
        })
    }
}

/// Appends one field in the native protocol: `KEY=value\n`, or, for a
/// value with a newline, `KEY\n`, its length as u64 LE, the value, `\n`.
pub fn put_field(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(key.as_bytes());
    if value.contains('\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value.as_bytes());
    out.push(b'\n');
}

/// A tracing field name as a journal field name: upper-case `A-Z0-9_`, no
/// leading `_` or digit (journald drops such fields), at most 64 bytes;
/// the names this layer sets itself get an `F_` prefix.
fn journal_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = out.trim_start_matches(|c: char| c == '_' || c.is_ascii_digit());
    out = trimmed.to_owned();
    if out.is_empty()
        || matches!(
            out.as_str(),
            "MESSAGE" | "MESSAGE_ID" | "PRIORITY" | "SYSLOG_IDENTIFIER" | "TARGET"
        )
    {
        out.insert_str(0, "F_");
    }
    out.truncate(64);
    out
}

#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.others
                .push((journal_name(field.name()), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.others.push((journal_name(field.name()), text));
        }
    }
}

/// The datagram journald gets for an event.
pub fn encode_event(identifier: &str, event: &Event<'_>) -> Vec<u8> {
    let mut fields = Fields::default();
    event.record(&mut fields);
    let meta = event.metadata();
    let mut out = Vec::with_capacity(256);
    put_field(&mut out, "PRIORITY", &priority(meta.level()).to_string());
    put_field(&mut out, "SYSLOG_IDENTIFIER", identifier);
    if let Some(id) = message_id(&fields.message) {
        put_field(&mut out, "MESSAGE_ID", id);
    }
    put_field(&mut out, "TARGET", meta.target());
    // The plain-text line, as on stderr, so `journalctl` alone says it all.
    let mut line = fields.message.clone();
    for (key, value) in &fields.others {
        let _ = write!(line, " {}={value}", key.to_ascii_lowercase());
    }
    put_field(&mut out, "MESSAGE", &line);
    for (key, value) in &fields.others {
        put_field(&mut out, key, value);
    }
    out
}

impl<S: Subscriber> Layer<S> for Journald {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let datagram = encode_event(&self.identifier, event);
        if self.socket.send(&datagram).is_err() {
            // journald gone or the datagram too large: the line still goes
            // somewhere (stderr is the journal stream under systemd).
            let text = String::from_utf8_lossy(&datagram).replace('\n', " ");
            eprintln!("journal {} unreachable: {text}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_encoded_in_the_native_protocol() {
        let mut out = Vec::new();
        put_field(&mut out, "A", "b");
        put_field(&mut out, "M", "x\ny");
        let mut want = b"A=b\nM\n".to_vec();
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"x\ny\n");
        assert_eq!(out, want);
    }

    #[test]
    fn names_are_what_journald_keeps() {
        assert_eq!(journal_name("device"), "DEVICE");
        assert_eq!(journal_name("expires_in_ms"), "EXPIRES_IN_MS");
        assert_eq!(journal_name("_secret"), "SECRET");
        assert_eq!(journal_name("priority"), "F_PRIORITY");
        assert_eq!(journal_name("r#type"), "R_TYPE");
        assert_eq!(journal_name("9"), "F_");
    }

    #[test]
    fn message_ids_are_distinct_128_bit_hex() {
        let mut seen = std::collections::BTreeSet::new();
        for (message, id) in MESSAGE_IDS {
            assert_eq!(id.len(), 32, "{message}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert!(seen.insert(id), "{id} reused");
        }
        assert_eq!(
            message_id("gate closed"),
            Some("a61ba49b1f8d4a5e95d9a910a9841d77")
        );
        assert_eq!(message_id("gate closed "), None);
    }

    /// Splits a datagram into its fields (the test's journald).
    pub(crate) fn parse(mut bytes: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let line_end = bytes.iter().position(|&b| b == b'\n').unwrap();
            let line = &bytes[..line_end];
            if let Some(eq) = line.iter().position(|&b| b == b'=') {
                out.push((
                    String::from_utf8(line[..eq].to_vec()).unwrap(),
                    String::from_utf8(line[eq + 1..].to_vec()).unwrap(),
                ));
                bytes = &bytes[line_end + 1..];
            } else {
                let key = String::from_utf8(line.to_vec()).unwrap();
                let rest = &bytes[line_end + 1..];
                let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
                out.push((key, String::from_utf8(rest[8..8 + len].to_vec()).unwrap()));
                assert_eq!(rest[8 + len], b'\n');
                bytes = &rest[8 + len + 1..];
            }
        }
        out
    }

    #[test]
    fn an_event_reaches_a_journal_socket_with_priority_and_message_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.socket");
        let journal = UnixDatagram::bind(&path).unwrap();
        let layer = Journald::connect(path).unwrap();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                device = "dev-1",
                reason = "drift\nsecond line",
                "gate closed"
            );
            tracing::info!(device = "dev-1", "nothing special");
        });
        let mut buf = vec![0u8; 65536];
        let n = journal.recv(&mut buf).unwrap();
        let fields = parse(&buf[..n]);
        let get = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("PRIORITY"), Some("4"));
        assert_eq!(get("MESSAGE_ID"), message_id("gate closed"));
        assert_eq!(get("DEVICE"), Some("dev-1"));
        assert_eq!(get("REASON"), Some("drift\nsecond line"));
        assert!(
            get("MESSAGE")
                .unwrap()
                .starts_with("gate closed device=dev-1")
        );
        let n = journal.recv(&mut buf).unwrap();
        let fields = parse(&buf[..n]);
        assert!(fields.iter().any(|(k, v)| k == "PRIORITY" && v == "6"));
        assert!(
            !fields.iter().any(|(k, _)| k == "MESSAGE_ID"),
            "only the listed events have an id"
        );
    }
}

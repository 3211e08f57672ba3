//! The gate socket: how the device's payment or locker software asks the
//! gate. A Unix stream socket (mode 0660, owned by the configured group)
//! speaking line-delimited JSON, one request per line, answered in order:
//!
//! ```text
//! {"authorize":{"amount":1250,"currency":"EUR","op":"capture","ref":"order-77"}}
//! → {"artifact":"3f2a…","decision":"permit","reason":null,"seq":4711,"v":1}
//! {"status":{}}      → the status object (see agent/README.md)
//! {"checkpoint":{}}  → {"checkpoint":4712,"v":1}  (lineage checkpoint now; used by `lineage export`)
//! anything else      → {"error":"…","v":1}
//! ```
//!
//! The schema is the shim's (`mctc_shim::api`): this module parses and
//! checks requests with it, and answers with its types.
//!
//! Bounded: at most `max_connections` connections (more are answered
//! `{"error":"busy"}` and closed), lines of at most `max_line_bytes`
//! (longer: error, connection closed), idle connections closed after
//! [`IDLE_TIMEOUT`], and every request answered within its timeout —
//! past it the answer is a deny (`timeout`). A permit is written only
//! after its lineage record is durable.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mctc_shim::api::{
    self, AuthorizeAnswer, CheckpointAnswer, Decision, DenyReason, Empty, ErrorAnswer,
};
use mctc_shim::lineage::DenyCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::clock::Clock;
use crate::config::GateSection;
use crate::enforcement::{AuthorizeRequest, Input};
use crate::error::AgentError;
use crate::lineage::writer::LineageHandle;

/// An idle connection is closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest answer a client reads.
const MAX_ANSWER_BYTES: u64 = 1024 * 1024;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Authorize(AuthorizeRequest),
    Status,
    Checkpoint,
}

/// Why a request line is refused; the text is safe to send back.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Not JSON of the schema (`mctc_shim::api::Request`).
    #[error("bad request: {0}")]
    Json(#[from] serde_json::Error),
    /// An authorize request whose fields break the wire's rules.
    #[error("bad request: {0}")]
    Invalid(#[from] api::RequestError),
}

/// Parses one request line against the schema, then checks an authorize
/// request's fields against the wire's rules.
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    Ok(match serde_json::from_slice::<api::Request>(line)? {
        api::Request::Status(Empty {}) => Request::Status,
        api::Request::Checkpoint(Empty {}) => Request::Checkpoint,
        api::Request::Authorize(a) => {
            let currency = a.check()?;
            Request::Authorize(AuthorizeRequest {
                op: a.op,
                amount: a.amount,
                currency,
                reference: a.reference,
            })
        }
    })
}

/// Any answer line.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Answer {
    Authorize(AuthorizeAnswer),
    Status(Box<api::Status>),
    Checkpoint(CheckpointAnswer),
    Error(ErrorAnswer),
}

impl Answer {
    fn error(text: impl Into<String>) -> Self {
        Self::Error(ErrorAnswer::new(text))
    }

    /// The line, newline included.
    fn line(&self) -> Vec<u8> {
        // Serializing these plain structs cannot fail (no maps with
        // non-string keys, no failing Serialize impls); an empty line would
        // read as an error to the client anyway.
        let mut bytes = serde_json::to_vec(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

fn deny(reason: DenyReason) -> Answer {
    Answer::Authorize(AuthorizeAnswer::deny(reason))
}

/// The numeric gid for a group name (from /etc/group) or number.
pub fn resolve_group(group: &str) -> Result<u32, AgentError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let text =
        std::fs::read_to_string("/etc/group").map_err(AgentError::io("read", "/etc/group"))?;
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let gid = fields.nth(1)?.parse::<u32>().ok()?;
            (name == group).then_some(gid)
        })
        .next()
        .ok_or_else(|| AgentError::Config(format!("gate.group `{group}`: no such group")))
}

/// Binds the socket: replaces a stale socket file, mode 0660, group set.
pub fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener, AgentError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            std::fs::remove_file(path).map_err(AgentError::io("remove stale socket", path))?;
        } else {
            return Err(AgentError::Config(format!(
                "gate.socket {}: exists and is not a socket",
                path.display()
            )));
        }
    }
    let listener = UnixListener::bind(path).map_err(AgentError::io("bind gate socket", path))?;
    if let Some(group) = group {
        let gid = resolve_group(group)?;
        rustix::fs::chown(path, None, Some(rustix::fs::Gid::from_raw(gid))).map_err(|e| {
            AgentError::Io {
                what: "chown gate socket",
                path: path.to_owned(),
                source: e.into(),
            }
        })?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(AgentError::io("chmod gate socket", path))?;
    Ok(listener)
}

/// What a connection needs.
#[derive(Debug, Clone)]
pub struct Service {
    pub inbox: mpsc::Sender<Input>,
    pub lineage: LineageHandle,
    pub settings: GateSection,
    /// The enforcement's clock (CLOCK_BOOTTIME): a permit is answered only
    /// within the request timeout and before the gate's deadline on it.
    pub clock: Arc<dyn Clock>,
}

/// Accepts connections until the listener fails or the task is dropped.
pub async fn serve(listener: UnixListener, service: Service) {
    let slots = Arc::new(Semaphore::new(service.settings.max_connections));
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::error!(error = %e, "gate socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!("gate socket: too many connections");
            tokio::spawn(async move {
                let _ = stream.write_all(&Answer::error("busy").line()).await;
            });
            continue;
        };
        let service = service.clone();
        tokio::spawn(async move {
            connection(stream, &service).await;
            drop(slot);
        });
    }
}

async fn connection(stream: UnixStream, service: &Service) {
    let (read, mut write) = stream.into_split();
    let mut reader = AsyncBufReader::new(read);
    let max = service.settings.max_line_bytes;
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let read = tokio::time::timeout(
            IDLE_TIMEOUT,
            (&mut reader)
                .take(max as u64 + 1)
                .read_until(b'\n', &mut line),
        )
        .await;
        match read {
            Ok(Ok(0)) | Err(_) => return,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "gate socket read failed");
                return;
            }
        }
        let complete = line.last() == Some(&b'\n');
        if !complete && line.len() > max {
            let answer = Answer::error(format!("line longer than {max} bytes"));
            let _ = write.write_all(&answer.line()).await;
            return;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let answer = match parse_request(text) {
            Ok(request) => handle(request, service).await,
            Err(e) => Answer::error(e.to_string()),
        };
        if write.write_all(&answer.line()).await.is_err() {
            return;
        }
        if !complete {
            return;
        }
    }
}

async fn handle(request: Request, service: &Service) -> Answer {
    let timeout = Duration::from_millis(service.settings.request_timeout_ms);
    match request {
        Request::Status => {
            let (reply, answer) = oneshot::channel();
            if service.inbox.send(Input::Status { reply }).await.is_err() {
                return Answer::error("agent stopping");
            }
            match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(status)) => Answer::Status(Box::new(status)),
                _ => Answer::error("timeout"),
            }
        }
        Request::Checkpoint => {
            match tokio::time::timeout(timeout, service.lineage.checkpoint()).await {
                Ok(Ok(Ok(seq))) => Answer::Checkpoint(CheckpointAnswer {
                    checkpoint: seq,
                    v: api::API_VERSION,
                }),
                Ok(Ok(Err(e))) => Answer::error(e.to_string()),
                _ => Answer::error("timeout"),
            }
        }
        Request::Authorize(request) => authorize(request, service).await,
    }
}

async fn authorize(request: AuthorizeRequest, service: &Service) -> Answer {
    let asked_ms = service.clock.now_ms();
    let (reply, pending) = oneshot::channel();
    let decide = Duration::from_millis(
        service
            .settings
            .fresh_request_timeout_ms
            .max(service.settings.request_timeout_ms),
    );
    let durable = Duration::from_millis(service.settings.request_timeout_ms);
    if service
        .inbox
        .send(Input::Authorize { request, reply })
        .await
        .is_err()
    {
        return deny(DenyReason::AgentStopping);
    }
    let pending = match tokio::time::timeout(decide, pending).await {
        Ok(Ok(pending)) => pending,
        Ok(Err(_)) => return deny(DenyReason::AgentStopping),
        Err(_) => return deny(DenyReason::Timeout),
    };
    let artifact = pending.cti.map(hex::encode);
    match tokio::time::timeout(durable, pending.durable).await {
        // The timeout is decided on the boot clock too: after a suspension
        // (SIGSTOP) both the record and the timer are ready on resume, and
        // the record would win.
        Ok(Ok(Ok(seq)))
            if pending.permit
                && let Some(reason) = late(service, asked_ms, pending.valid_until_ms) =>
        {
            tracing::warn!(
                seq,
                reason = reason.name(),
                "permit durable only after its request timeout or the gate's deadline: answered deny"
            );
            Answer::Authorize(AuthorizeAnswer {
                artifact,
                decision: Decision::Deny,
                reason: Some(reason),
                seq: Some(seq),
                v: api::API_VERSION,
            })
        }
        Ok(Ok(Ok(seq))) => Answer::Authorize(AuthorizeAnswer {
            artifact,
            decision: if pending.permit {
                Decision::Permit
            } else {
                Decision::Deny
            },
            reason: pending.reason.map(DenyReason::Gate),
            seq: Some(seq),
            v: api::API_VERSION,
        }),
        Ok(Ok(Err(e))) => {
            tracing::error!(error = %e, "decision not durable: answered deny");
            Answer::Authorize(AuthorizeAnswer {
                artifact,
                decision: Decision::Deny,
                reason: Some(if pending.permit {
                    DenyReason::LineageUnavailable
                } else {
                    DenyReason::Gate(pending.reason.unwrap_or(DenyCode::Closed))
                }),
                seq: None,
                v: api::API_VERSION,
            })
        }
        _ => deny(DenyReason::Timeout),
    }
}

/// Why a permit asked at `asked_ms` is too late to answer now, if it is:
/// at or after the gate's deadline it was decided under ("closed": the
/// writer recorded it as the closed gate's deny, its stamp being no earlier
/// than now on the same clock), or past the request timeout ("timeout").
fn late(service: &Service, asked_ms: u64, valid_until_ms: Option<u64>) -> Option<DenyReason> {
    let now = service.clock.now_ms();
    if valid_until_ms.is_some_and(|deadline| now >= deadline) {
        Some(DenyReason::Gate(DenyCode::Closed))
    } else if now.saturating_sub(asked_ms) > service.settings.request_timeout_ms {
        Some(DenyReason::Timeout)
    } else {
        None
    }
}

/// The thin client: one request, one answer (blocking; for the CLI). The
/// answer is read as `T`, typically `api::Reply<…>` of the request's answer.
pub fn request<T: DeserializeOwned>(
    path: &Path,
    request: &(impl Serialize + ?Sized),
    timeout: Duration,
) -> Result<T, AgentError> {
    let fail = |reason: String| AgentError::Socket {
        path: PathBuf::from(path),
        reason,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| fail(format!("cannot connect: {e} (is mctc-agent running?)")))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| fail(e.to_string()))?;
    let mut line = serde_json::to_vec(request).map_err(|e| fail(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(|e| fail(e.to_string()))?;
    let mut answer = Vec::new();
    BufReader::new(std::io::Read::take(&stream, MAX_ANSWER_BYTES))
        .read_until(b'\n', &mut answer)
        .map_err(|e| fail(format!("no answer: {e}")))?;
    if answer.is_empty() {
        return Err(fail("closed without an answer".into()));
    }
    serde_json::from_slice(&answer).map_err(|e| fail(format!("unparsable answer: {e}")))
}

#[cfg(test)]
mod tests {
    use mctc_shim::artifact::Currency;
    use serde_json::Value;

    use super::*;

    #[test]
    fn requests_parse_strictly() {
        assert_eq!(
            parse_request(br#"{"status":{}}"#).ok(),
            Some(Request::Status)
        );
        assert_eq!(
            parse_request(br#"{"checkpoint":{}}"#).ok(),
            Some(Request::Checkpoint)
        );
        let Ok(Request::Authorize(a)) = parse_request(
            br#"{"authorize":{"op":"capture","amount":5,"currency":"EUR","ref":"x"}}"#,
        ) else {
            panic!("authorize")
        };
        assert_eq!(a.op, "capture");
        assert_eq!(a.amount, Some(5));
        assert_eq!(a.currency, Currency::new("EUR"));
        assert_eq!(a.reference.as_deref(), Some("x"));
        for bad in [
            &br#"{"authorize":{"op":""}}"#[..],
            br#"{"authorize":{"op":"has space"}}"#,
            br#"{"authorize":{"op":"x","currency":"eur"}}"#,
            br#"{"authorize":{"op":"x","amount":-1}}"#,
            br#"{"authorize":{"op":"x","extra":1}}"#,
            br#"{"authorize":{"op":"x"},"status":{}}"#,
            br#"{"status":{"x":1}}"#,
            br#"{"reboot":{}}"#,
            b"\xff\xfe",
            b"[]",
        ] {
            assert!(
                parse_request(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long_op = format!(r#"{{"authorize":{{"op":"{}"}}}}"#, "o".repeat(33));
        assert!(parse_request(long_op.as_bytes()).is_err());
        let long_ref = format!(r#"{{"authorize":{{"op":"x","ref":"{}"}}}}"#, "r".repeat(65));
        assert!(parse_request(long_ref.as_bytes()).is_err());
    }

    /// A server whose "enforcement task" is the test: it sees the inputs.
    async fn server(
        max_connections: usize,
        request_timeout_ms: u64,
    ) -> (
        tempfile::TempDir,
        PathBuf,
        mpsc::Receiver<Input>,
        LineageHandle,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gate.sock");
        let listener = bind(&path, Some(&rustix::process::getgid().as_raw().to_string())).unwrap();
        let (inbox, inputs) = mpsc::channel(16);
        let (lineage, _thread) =
            crate::lineage::writer::spawn(crate::lineage::writer::WriterStart {
                store: crate::lineage::store::Store::open(crate::lineage::store::StoreConfig::new(
                    dir.path().join("lineage"),
                )),
                device: mctc_shim::DeviceId::new("d1").unwrap(),
                clock: Arc::new(crate::clock::BootClock {
                    wall_trusted: false,
                }),
                boot: crate::clock::CurrentBoot::default(),
                quoter: Box::new(NoQuote),
                settings: crate::lineage::writer::WriterSettings {
                    commit_window: Duration::ZERO,
                    checkpoint_every_records: 1000,
                    checkpoint_every: Duration::from_secs(3600),
                },
            })
            .unwrap();
        let settings = GateSection {
            socket: path.clone(),
            max_connections,
            max_line_bytes: 128,
            request_timeout_ms,
            fresh_request_timeout_ms: request_timeout_ms,
            ..GateSection::default()
        };
        tokio::spawn(serve(
            listener,
            Service {
                inbox,
                lineage: lineage.clone(),
                settings,
                clock: Arc::new(crate::clock::BootClock {
                    wall_trusted: false,
                }),
            },
        ));
        (dir, path, inputs, lineage)
    }

    struct NoQuote;

    impl crate::lineage::writer::Quoter for NoQuote {
        fn quote(
            &mut self,
            _: [u8; 32],
        ) -> Result<(Vec<u8>, Vec<u8>), crate::platform::PlatformError> {
            // No TPM in this test: a checkpoint never gets its quote.
            Err(crate::platform::PlatformError::Timeout {
                op: crate::platform::PlatformOp::CheckpointQuote,
                within: std::time::Duration::ZERO,
            })
        }
    }

    async fn ask(stream: &mut UnixStream, line: &str) -> Option<Value> {
        stream.write_all(line.as_bytes()).await.ok()?;
        let mut reader = AsyncBufReader::new(stream);
        let mut answer = Vec::new();
        reader.read_until(b'\n', &mut answer).await.ok()?;
        serde_json::from_slice(&answer).ok()
    }

    #[tokio::test]
    async fn the_socket_is_group_only_bounded_and_answers_deny_on_timeout() {
        let (_dir, path, mut inputs, lineage) = server(2, 300).await;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);

        // A permit is only answered once its record is durable.
        let mut client = UnixStream::connect(&path).await.unwrap();
        let first = lineage.clone();
        let answering = tokio::spawn(async move {
            let Some(Input::Authorize { request, reply }) = inputs.recv().await else {
                panic!("no authorize input");
            };
            assert_eq!(request.op, "unlock");
            let durable = first.append(crate::lineage::entry::Entry::agent_start("t"));
            let _ = reply.send(crate::enforcement::Pending {
                permit: true,
                reason: None,
                cti: Some([7; 16]),
                valid_until_ms: Some(mctc_service::clock::boottime_ms() + 60_000),
                durable,
            });
            inputs
        });
        let answer = ask(&mut client, "{\"authorize\":{\"op\":\"unlock\"}}\n")
            .await
            .unwrap();
        assert_eq!(answer["decision"], "permit", "{answer}");
        assert_eq!(answer["seq"], 0);
        assert_eq!(answer["artifact"], hex::encode([7; 16]));
        let mut inputs = answering.await.unwrap();

        // A permit whose record became durable only at or after the gate's
        // deadline (a stalled fdatasync, a suspended agent) is a deny: the
        // client must not act on a lapsed authorization.
        let answering = tokio::spawn(async move {
            let Some(Input::Authorize { reply, .. }) = inputs.recv().await else {
                panic!("no authorize input");
            };
            let durable = lineage.append(crate::lineage::entry::Entry::agent_start("t"));
            let _ = reply.send(crate::enforcement::Pending {
                permit: true,
                reason: None,
                cti: Some([7; 16]),
                valid_until_ms: Some(mctc_service::clock::boottime_ms()),
                durable,
            });
            inputs
        });
        let answer = ask(&mut client, "{\"authorize\":{\"op\":\"unlock\"}}\n")
            .await
            .unwrap();
        assert_eq!(answer["decision"], "deny", "{answer}");
        assert_eq!(answer["reason"], "closed");
        assert_eq!(
            answer["seq"], 1,
            "the record exists; the client must not act on it"
        );
        let mut inputs = answering.await.unwrap();

        // Nobody answers: deny (timeout), never a hang.
        let started = std::time::Instant::now();
        let answer = ask(&mut client, "{\"authorize\":{\"op\":\"unlock\"}}\n")
            .await
            .unwrap();
        assert_eq!(answer["decision"], "deny");
        assert_eq!(answer["reason"], "timeout");
        assert!(started.elapsed() < Duration::from_secs(2));
        let _ = inputs.recv().await;

        // Garbage is an error on the same connection.
        let answer = ask(&mut client, "nonsense\n").await.unwrap();
        assert!(answer["error"].as_str().unwrap().contains("bad request"));

        // A second connection is fine, a third is busy.
        let _second = UnixStream::connect(&path).await.unwrap();
        let mut third = UnixStream::connect(&path).await.unwrap();
        let mut busy = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut third, &mut busy)
            .await
            .unwrap();
        assert!(busy.contains("busy"), "{busy}");

        // An overlong line: error, and the connection is closed.
        let long = format!("{{\"authorize\":{{\"op\":\"{}\"}}}}\n", "x".repeat(200));
        let answer = ask(&mut client, &long).await.unwrap();
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("longer than 128")
        );
        let mut rest = String::new();
        let closed = tokio::io::AsyncReadExt::read_to_string(&mut client, &mut rest).await;
        assert!(matches!(closed, Ok(0)) || closed.is_err(), "{rest}");
    }

    #[test]
    fn groups_resolve_by_number_and_name() {
        assert_eq!(resolve_group("1234").unwrap(), 1234);
        assert_eq!(resolve_group("root").unwrap(), 0);
        assert!(resolve_group("no-such-group-mctc").is_err());
    }
}

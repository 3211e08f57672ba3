//! Prometheus metrics in the OpenMetrics text format, and the small HTTP
//! server that serves them on `GET /metrics`.
//!
//! One implementation for the authority and the collector. A daemon keeps
//! its metrics in plain atomics ([`Counter`], [`Gauge`], [`CounterFamily`])
//! updated where the event happens, and implements [`Metrics`] to write
//! them with an [`Encoder`] at scrape time; no registry, no global state.
//!
//! The server listens on loopback only ([`MetricsError::NotLoopback`]):
//! the numbers say how many devices are refused and why, which is not for
//! the network at large, and mutual TLS on this endpoint is deliberately
//! absent; a node exporter or Prometheus agent on the same host scrapes it.
//! It is robust rather than complete: one request per connection, the
//! request head bounded ([`MAX_REQUEST_BYTES`]) and read within
//! [`REQUEST_TIMEOUT`], at most [`MAX_CONNECTIONS`] at once, only
//! `GET /metrics` (or `HEAD`); anything else is answered 400, 404, 405 or
//! 431 and the connection closed. The request parser ([`parse_request`])
//! is a pure function, property-tested on arbitrary bytes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
pub use tokio_util::sync::CancellationToken;

/// The content type of an OpenMetrics text exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The largest request head read; a longer one is answered 431.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long a client has to send its request head and take the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; further ones wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 16;
/// Distinct label values of one [`CounterFamily`]; further values are
/// counted under `other`, so a bug or a hostile input cannot grow a
/// family without bound.
pub const MAX_LABEL_VALUES: usize = 64;

/// What can go wrong when starting the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The configured address is not a loopback address.
    #[error(
        "metrics.listen {addr}: only a loopback address is served (127.0.0.1 or ::1); scrape through a local agent"
    )]
    NotLoopback { addr: SocketAddr },
    /// The address could not be bound.
    #[error("metrics.listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    /// Raises the count to `total` (a running total kept elsewhere); never
    /// lowers it.
    pub fn raise_to(&self, total: u64) {
        self.0.fetch_max(total, Ordering::Relaxed);
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters told apart by the value of one label (a refusal reason, an
/// anomaly kind), bounded by [`MAX_LABEL_VALUES`].
#[derive(Debug, Default)]
pub struct CounterFamily(Mutex<BTreeMap<String, u64>>);

impl CounterFamily {
    /// Adds one to the counter of `value`.
    pub fn inc(&self, value: &str) {
        // A poisoned lock only means another thread panicked mid-increment;
        // the map is still a valid map of counts.
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(value) {
            *n += 1;
        } else if map.len() < MAX_LABEL_VALUES {
            map.insert(value.to_owned(), 1);
        } else {
            *map.entry("other".to_owned()).or_insert(0) += 1;
        }
    }
    /// The count of `value`.
    pub fn get(&self, value: &str) -> u64 {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(value).copied().unwrap_or(0)
    }
    fn snapshot(&self) -> Vec<(String, u64)> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Writes metric families in the OpenMetrics text format.
#[derive(Debug, Default)]
pub struct Encoder {
    out: String,
}

fn escape(value: &str) -> String {
    let mut s = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

impl Encoder {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        let _ = writeln!(self.out, "# HELP {name} {}", escape(help));
    }

    /// A counter family `name` with one sample `name_total`.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, "counter", help);
        let _ = writeln!(self.out, "{name}_total {value}");
    }

    /// A counter family `name` with one sample per value of `label`.
    pub fn counter_family(&mut self, name: &str, help: &str, label: &str, family: &CounterFamily) {
        self.counter_samples(name, help, label, &family.snapshot());
    }

    /// A counter family `name` with the given samples of `label`.
    pub fn counter_samples(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        samples: &[(impl AsRef<str>, u64)],
    ) {
        self.header(name, "counter", help);
        for (value, n) in samples {
            let _ = writeln!(
                self.out,
                "{name}_total{{{label}=\"{}\"}} {n}",
                escape(value.as_ref())
            );
        }
    }

    /// A gauge `name`.
    pub fn gauge(&mut self, name: &str, help: &str, value: i64) {
        self.header(name, "gauge", help);
        let _ = writeln!(self.out, "{name} {value}");
    }

    /// A gauge `name` with a floating-point value.
    pub fn gauge_f64(&mut self, name: &str, help: &str, value: f64) {
        self.header(name, "gauge", help);
        let _ = writeln!(self.out, "{name} {value}");
    }

    /// An info family `name` (sample `name_info{…} 1`).
    pub fn info(&mut self, name: &str, help: &str, labels: &[(&str, &str)]) {
        self.header(name, "info", help);
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let _ = writeln!(self.out, "{name}_info{{{}}} 1", labels.join(","));
    }

    /// The exposition, `# EOF` terminated.
    pub fn finish(mut self) -> String {
        self.out.push_str("# EOF\n");
        self.out
    }
}

/// What a daemon exposes.
pub trait Metrics: Send + Sync {
    /// Writes every family of the daemon.
    fn encode(&self, encoder: &mut Encoder);
}

/// The build of a binary: `mctc_build_info{binary, version, git}`. `git` is
/// the commit the packages were built from (`MCTC_GIT_HASH` at build time),
/// `unknown` otherwise.
pub fn encode_build_info(encoder: &mut Encoder, binary: &str, version: &str) {
    encoder.info(
        "mctc_build",
        "The running binary's version and source commit.",
        &[
            ("binary", binary),
            ("version", version),
            ("git", option_env!("MCTC_GIT_HASH").unwrap_or("unknown")),
        ],
    );
}

/// Renders `metrics` as a complete exposition.
pub fn render(metrics: &dyn Metrics) -> String {
    let mut encoder = Encoder::default();
    metrics.encode(&mut encoder);
    encoder.finish()
}

/// A request the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `GET /metrics` (`head`: without a body).
    Metrics { head: bool },
    /// A well-formed request for another path.
    NotFound,
    /// A well-formed request with another method.
    MethodNotAllowed,
}

/// Why a request head was not parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// More bytes are needed (no blank line yet).
    #[error("incomplete request")]
    Incomplete,
    /// Longer than [`MAX_REQUEST_BYTES`] without its end.
    #[error("request head too large")]
    TooLarge,
    /// Not an HTTP/1.x request line, or bad header bytes.
    #[error("malformed request")]
    Malformed,
}

/// Parses an HTTP/1.x request head from the bytes read so far. Only the
/// request line is interpreted; header lines must be printable ASCII with a
/// colon. A body is never read (GET and HEAD have none).
pub fn parse_request(buf: &[u8]) -> Result<Request, ParseError> {
    let end = match find(buf, b"\r\n\r\n") {
        Some(end) if end + 4 <= MAX_REQUEST_BYTES => end,
        Some(_) => return Err(ParseError::TooLarge),
        None if buf.len() >= MAX_REQUEST_BYTES => return Err(ParseError::TooLarge),
        None => {
            // A request line that is already wrong need not wait for more.
            if let Some(line_end) = find(buf, b"\r\n") {
                request_line(&buf[..line_end])?;
            } else if buf
                .iter()
                .any(|&b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n') && !b.is_ascii_graphic())
            {
                return Err(ParseError::Malformed);
            }
            return Err(ParseError::Incomplete);
        }
    };
    let mut lines = CrLfLines(&buf[..end]);
    let request = request_line(lines.next().ok_or(ParseError::Malformed)?)?;
    for line in lines {
        let header_ok = line.contains(&b':')
            && line
                .iter()
                .all(|&b| b == b' ' || b == b'\t' || b.is_ascii_graphic());
        if !header_ok {
            return Err(ParseError::Malformed);
        }
    }
    Ok(request)
}

fn request_line(line: &[u8]) -> Result<Request, ParseError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::Malformed);
    };
    let token = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_graphic);
    if !token(method) || !token(target) || !matches!(version, b"HTTP/1.1" | b"HTTP/1.0") {
        return Err(ParseError::Malformed);
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or(target);
    match (method, path) {
        (b"GET" | b"HEAD", b"/metrics") => Ok(Request::Metrics {
            head: method == b"HEAD",
        }),
        (b"GET" | b"HEAD", _) => Ok(Request::NotFound),
        _ => Ok(Request::MethodNotAllowed),
    }
}

/// The lines of a request head, split on CRLF (a bare LF stays in its line
/// and makes it malformed).
struct CrLfLines<'a>(&'a [u8]);

impl<'a> Iterator for CrLfLines<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.0.is_empty() {
            return None;
        }
        let rest = self.0;
        match find(rest, b"\r\n") {
            Some(i) => {
                self.0 = &rest[i + 2..];
                Some(&rest[..i])
            }
            None => {
                self.0 = &[];
                Some(rest)
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A bound metrics endpoint, not serving yet.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
}

impl MetricsServer {
    /// Binds `addr`, which must be a loopback address.
    pub async fn bind(addr: SocketAddr) -> Result<MetricsServer, MetricsError> {
        if !addr.ip().is_loopback() {
            return Err(MetricsError::NotLoopback { addr });
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Bind { addr, source })?;
        Ok(MetricsServer { listener })
    }

    /// The bound address (the port, when 0 was asked for).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `stop` is cancelled.
    pub async fn serve(self, metrics: Arc<dyn Metrics>, stop: CancellationToken) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let permit = tokio::select! {
                () = stop.cancelled() => return,
                permit = Arc::clone(&slots).acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    let metrics = Arc::clone(&metrics);
                    tokio::spawn(async move {
                        let _ =
                            tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, metrics.as_ref()))
                                .await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Out of descriptors, usually: wait rather than spin.
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn answer(mut stream: TcpStream, metrics: &dyn Metrics) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let request = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_request(&buf) {
            Err(ParseError::Incomplete) => continue,
            other => break other,
        }
    };
    let (status, content_type, body, head) = match request {
        Ok(Request::Metrics { head }) => ("200 OK", CONTENT_TYPE, render(metrics), head),
        Ok(Request::NotFound) => ("404 Not Found", "text/plain", "not found\n".into(), false),
        Ok(Request::MethodNotAllowed) => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET /metrics\n".into(),
            false,
        ),
        Err(ParseError::TooLarge) => (
            "431 Request Header Fields Too Large",
            "text/plain",
            "request too large\n".into(),
            false,
        ),
        Err(_) => (
            "400 Bad Request",
            "text/plain",
            "bad request\n".into(),
            false,
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        response.push_str("Allow: GET, HEAD\r\n");
    }
    response.push_str("\r\n");
    if !head {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_what_a_scraper_sends() {
        let req = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9464\r\nAccept: application/openmetrics-text\r\n\r\n";
        assert_eq!(parse_request(req), Ok(Request::Metrics { head: false }));
        assert_eq!(
            parse_request(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Ok(Request::Metrics { head: true })
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\n\r\n"),
            Ok(Request::NotFound)
        );
        assert_eq!(
            parse_request(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Ok(Request::MethodNotAllowed)
        );
    }

    #[test]
    fn refuses_garbage_early_and_long_heads() {
        assert_eq!(
            parse_request(b"GET /metrics\r\n"),
            Err(ParseError::Malformed)
        );
        assert_eq!(
            parse_request(b"\x16\x03\x01\x02\x00"),
            Err(ParseError::Malformed),
            "a TLS hello is refused at once"
        );
        assert_eq!(
            parse_request(b"GET /metrics HTTP/2.0\r\n\r\n"),
            Err(ParseError::Malformed)
        );
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n"),
            Err(ParseError::Malformed)
        );
        let long = vec![b'a'; MAX_REQUEST_BYTES];
        assert_eq!(parse_request(&long), Err(ParseError::TooLarge));
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.extend(vec![b'a'; MAX_REQUEST_BYTES]);
        assert_eq!(parse_request(&big), Err(ParseError::TooLarge));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_request(&big), Err(ParseError::TooLarge));
        assert_eq!(parse_request(b"GET /met"), Err(ParseError::Incomplete));
    }

    #[test]
    fn encodes_openmetrics_with_eof_and_escaped_labels() {
        struct M(CounterFamily, Counter, Gauge);
        impl Metrics for M {
            fn encode(&self, e: &mut Encoder) {
                e.counter_family("mctc_x_refusals", "Refusals.", "reason", &self.0);
                e.counter("mctc_x_issued", "Issued.", self.1.get());
                e.gauge("mctc_x_leader", "Leader.", self.2.get());
                encode_build_info(e, "mctc-x", "0.1.0");
            }
        }
        let m = M(
            CounterFamily::default(),
            Counter::default(),
            Gauge::default(),
        );
        m.0.inc("bad \"pcr\"\n");
        m.0.inc("stale");
        m.0.inc("stale");
        m.1.add(3);
        m.2.set(1);
        let text = render(&m);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("mctc_x_refusals_total{reason=\"bad \\\"pcr\\\"\\n\"} 1"),
            "{text}"
        );
        assert!(text.contains("mctc_x_refusals_total{reason=\"stale\"} 2"));
        assert!(
            text.contains("# TYPE mctc_x_issued counter\nmctc_x_issued_total 3\n")
                || text.contains("mctc_x_issued_total 3")
        );
        assert!(text.contains("mctc_x_leader 1"));
        assert!(text.contains("mctc_build_info{binary=\"mctc-x\",version=\"0.1.0\",git="));
        assert_eq!(text.matches("# EOF").count(), 1);
    }

    #[test]
    fn a_family_is_bounded() {
        let f = CounterFamily::default();
        for i in 0..(MAX_LABEL_VALUES + 10) {
            f.inc(&format!("v{i}"));
        }
        assert_eq!(f.snapshot().len(), MAX_LABEL_VALUES + 1);
        assert_eq!(f.get("other"), 10);
    }

    #[tokio::test]
    async fn only_loopback_is_bound() {
        for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.1:9464"] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert!(
                matches!(
                    MetricsServer::bind(addr).await,
                    Err(MetricsError::NotLoopback { .. })
                ),
                "{addr}"
            );
        }
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        assert_ne!(server.local_addr().unwrap().port(), 0);
    }

    proptest! {
        #[test]
        fn never_panics_and_never_grants_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..10_000)) {
            let parsed = parse_request(&bytes);
            if let Ok(Request::Metrics { .. }) = parsed {
                prop_assert!(bytes.starts_with(b"GET /metrics") || bytes.starts_with(b"HEAD /metrics"));
            }
        }

        #[test]
        fn every_prefix_of_a_valid_request_is_incomplete(
            host in "[a-z0-9.:]{1,40}",
            extra in proptest::collection::vec(("[A-Za-z-]{1,20}", "[ -~]{0,60}"), 0..8),
        ) {
            let mut req = format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\n");
            for (k, v) in &extra {
                req.push_str(&format!("{k}: {v}\r\n"));
            }
            req.push_str("\r\n");
            let bytes = req.as_bytes();
            prop_assert_eq!(parse_request(bytes), Ok(Request::Metrics { head: false }));
            for cut in 0..bytes.len() {
                prop_assert_eq!(parse_request(&bytes[..cut]), Err(ParseError::Incomplete), "cut at {}", cut);
            }
        }
    }
}

//! A plain HTTP/1.1 client for the services' `/metrics` (std sockets, no
//! HTTP library): raw requests so tests can also send garbage, and the
//! exposition parsed into samples.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// An answer: status code, header lines, body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` as is and reads the answer to the end (the server
/// closes every connection). `None` if the server closed without a
/// status line.
pub fn raw(addr: SocketAddr, request: &[u8]) -> Option<Answer> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    // The server may answer and close before the whole request is written.
    let _ = stream.write_all(request);
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Some(Answer {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// `GET /metrics`.
pub fn get_metrics(addr: SocketAddr) -> Option<Answer> {
    raw(
        addr,
        format!(
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: application/openmetrics-text\r\n\r\n"
        )
        .as_bytes(),
    )
}

/// The samples of an exposition: `(name, labels, value)`, labels as the
/// text between the braces.
pub fn samples(body: &str) -> Vec<(String, String, f64)> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            Some((name.to_owned(), labels.to_owned(), value))
        })
        .collect()
}

/// The value of the sample `name` whose labels contain `labels` (all of
/// `name`'s samples summed when `labels` is empty).
pub fn value(body: &str, name: &str, labels: &str) -> f64 {
    samples(body)
        .into_iter()
        .filter(|(n, l, _)| n == name && l.contains(labels))
        .map(|(_, _, v)| v)
        .sum()
}

/// The metric family names an exposition declares (`# TYPE` lines).
pub fn families(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// Where a daemon serves `/metrics`, from its log line `metrics served on
/// /metrics addr=…` (the last one: a restarted daemon logs again).
pub fn addr_from_log(log: &str) -> Option<SocketAddr> {
    log.lines()
        .rev()
        .find(|l| l.contains("metrics served on /metrics"))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))?
        .parse()
        .ok()
}

//! The continuous gate probe: a thread that asks a device's gate socket for
//! `unlock` again and again, as the device's own software would, and keeps
//! every answer with when it was asked and when it was answered.
//!
//! A permit the probe sees is the fact a scenario judges: one seen while the
//! gate had to be closed is a failure, and every one must be found in the
//! device's lineage and in the collector.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Pause between two requests of one probe (the agent answers a permit in
/// about a millisecond; this keeps the lineage growth and the CPU share of
/// the probe modest while still resolving a close to a few milliseconds).
const PAUSE: Duration = Duration::from_millis(4);
/// Longest wait for one answer. Longer than the agent's own request
/// timeout, so a live agent always answers first; a stopped one does not.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// What one request got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A permit, with the seq of its lineage record and the artifact id.
    Permit { seq: u64, cti: String },
    /// A deny, with its reason.
    Deny { reason: String },
    /// Anything else: no agent, a broken connection, an error line. The
    /// device's software treats all of it as a deny.
    Unreachable { detail: String },
}

/// One request and its answer.
#[derive(Debug, Clone)]
pub struct Observation {
    pub sent: Instant,
    pub answered: Instant,
    /// The request's `ref` (`{tag}-{n}`), which its decision record keeps.
    pub reference: String,
    pub answer: Answer,
}

impl Observation {
    pub fn is_permit(&self) -> bool {
        matches!(self.answer, Answer::Permit { .. })
    }

    /// Whether this was a deny for `reason`.
    pub fn denied_for(&self, reason: &str) -> bool {
        matches!(&self.answer, Answer::Deny { reason: r } if r == reason)
    }
}

/// A permit answered to a client, as the lineage check needs it: the seq
/// of its record, the artifact it was decided under, the request's `ref`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    pub seq: u64,
    pub cti: String,
    pub reference: String,
}

/// A running probe; stopped (and joined) by [`Probe::stop`] or on drop.
#[derive(Debug)]
pub struct Probe {
    running: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Observation>>>,
    thread: Option<JoinHandle<()>>,
}

/// Classifies one answer line of the gate socket.
pub fn classify(answer: &Value) -> Answer {
    match answer["decision"].as_str() {
        Some("permit") => match (answer["seq"].as_u64(), answer["artifact"].as_str()) {
            (Some(seq), Some(cti)) => Answer::Permit {
                seq,
                cti: cti.to_owned(),
            },
            // A permit without its durable record is not a permit the
            // client may act on; flag it loudly as unreachable garbage.
            _ => Answer::Unreachable {
                detail: format!("malformed permit: {answer}"),
            },
        },
        Some("deny") => Answer::Deny {
            reason: answer["reason"].as_str().unwrap_or("none").to_owned(),
        },
        _ => Answer::Unreachable {
            detail: answer.to_string(),
        },
    }
}

struct Connection {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Connection {
    fn open(socket: &Path) -> std::io::Result<Connection> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
        let writer = stream.try_clone()?;
        Ok(Connection {
            reader: BufReader::new(stream),
            writer,
        })
    }

    fn ask(&mut self, line: &str) -> Result<Value, String> {
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut answer = String::new();
        match self.reader.read_line(&mut answer) {
            Ok(0) => Err("closed".to_owned()),
            Ok(_) => serde_json::from_str(answer.trim_end()).map_err(|e| format!("{e}: {answer}")),
            Err(e) => Err(format!("read: {e}")),
        }
    }
}

impl Probe {
    /// Starts probing `socket` with `unlock` requests whose `ref` starts
    /// with `tag`.
    pub fn start(socket: &Path, tag: &str) -> Probe {
        let running = Arc::new(AtomicBool::new(true));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let socket: PathBuf = socket.to_owned();
        let tag = tag.to_owned();
        let thread = {
            let running = Arc::clone(&running);
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || run(&socket, &tag, &running, &seen))
        };
        Probe {
            running,
            seen,
            thread: Some(thread),
        }
    }

    /// Everything seen so far.
    pub fn observations(&self) -> Vec<Observation> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Whether a permit was answered to a request asked at or after `t`.
    pub fn permitted_since(&self, t: Instant) -> bool {
        self.any_since(t, Observation::is_permit)
    }

    /// Whether a request asked at or after `t` was not permitted.
    pub fn denied_since(&self, t: Instant) -> bool {
        self.any_since(t, |o| !o.is_permit())
    }

    /// Whether a request asked at or after `t` was denied for `reason`.
    pub fn denied_for_since(&self, t: Instant, reason: &str) -> bool {
        self.any_since(t, |o| o.denied_for(reason))
    }

    /// How many permits this probe has been answered.
    pub fn permits(&self) -> usize {
        self.seen
            .lock()
            .map(|s| s.iter().filter(|o| o.is_permit()).count())
            .unwrap_or(0)
    }

    /// Whether an answer to a request asked at or after `t` matches.
    fn any_since(&self, t: Instant, matches: impl Fn(&Observation) -> bool) -> bool {
        self.seen
            .lock()
            .map(|s| s.iter().rev().take_while(|o| o.sent >= t).any(&matches))
            .unwrap_or(false)
    }

    /// Stops the probe and returns everything it saw.
    pub fn stop(mut self) -> Vec<Observation> {
        self.halt();
        self.observations()
    }

    fn halt(&mut self) {
        self.running.store(false, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.halt();
    }
}

fn run(socket: &Path, tag: &str, running: &AtomicBool, seen: &Mutex<Vec<Observation>>) {
    let mut connection: Option<Connection> = None;
    let mut n: u64 = 0;
    while running.load(Ordering::Acquire) {
        n += 1;
        let reference = format!("{tag}-{n}");
        let line = format!("{{\"authorize\":{{\"op\":\"unlock\",\"ref\":\"{reference}\"}}}}\n");
        let sent = Instant::now();
        let answer = match connection.as_mut() {
            Some(c) => c.ask(&line),
            None => match Connection::open(socket) {
                Ok(mut c) => {
                    let answer = c.ask(&line);
                    connection = Some(c);
                    answer
                }
                Err(e) => Err(format!("connect: {e}")),
            },
        };
        let answer = match answer {
            Ok(value) => classify(&value),
            Err(detail) => {
                // Reconnect next time: the agent may have restarted.
                connection = None;
                Answer::Unreachable { detail }
            }
        };
        let unreachable = matches!(answer, Answer::Unreachable { .. });
        if let Ok(mut seen) = seen.lock() {
            seen.push(Observation {
                sent,
                answered: Instant::now(),
                reference,
                answer,
            });
        }
        // An absent agent is polled a little more gently.
        std::thread::sleep(if unreachable { PAUSE * 5 } else { PAUSE });
    }
}

/// Permits among `seen` that were asked at or after `from` and answered
/// at or before `until`: the ones a fault window forbids.
pub fn permits_between(seen: &[Observation], from: Instant, until: Instant) -> Vec<&Observation> {
    seen.iter()
        .filter(|o| o.is_permit() && o.sent >= from && o.answered <= until)
        .collect()
}

/// The first answer after `from` that is not a permit, as time since
/// `from`.
pub fn first_deny_after(seen: &[Observation], from: Instant) -> Option<Duration> {
    seen.iter()
        .find(|o| o.sent >= from && !o.is_permit())
        .map(|o| o.answered.saturating_duration_since(from))
}

/// The permits, for the lineage check.
pub fn permits(seen: &[Observation]) -> Vec<Permit> {
    seen.iter()
        .filter_map(|o| match &o.answer {
            Answer::Permit { seq, cti } => Some(Permit {
                seq: *seq,
                cti: cti.clone(),
                reference: o.reference.clone(),
            }),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_are_classified_as_the_device_software_would() {
        assert_eq!(
            classify(&json!({"decision":"permit","reason":null,"seq":7,"artifact":"ab"})),
            Answer::Permit {
                seq: 7,
                cti: "ab".into()
            }
        );
        assert_eq!(
            classify(&json!({"decision":"deny","reason":"closed","seq":8,"artifact":null})),
            Answer::Deny {
                reason: "closed".into()
            }
        );
        assert!(matches!(
            classify(&json!({"decision":"permit","seq":null})),
            Answer::Unreachable { .. }
        ));
        assert!(matches!(
            classify(&json!({"error":"busy"})),
            Answer::Unreachable { .. }
        ));
    }

    #[test]
    fn window_selection_uses_send_and_answer_times() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let obs = |s, a, permit: bool| Observation {
            sent: at(s),
            answered: at(a),
            reference: format!("t-{s}"),
            answer: if permit {
                Answer::Permit {
                    seq: s,
                    cti: String::new(),
                }
            } else {
                Answer::Deny {
                    reason: "closed".into(),
                }
            },
        };
        let seen = vec![
            obs(0, 1, true),
            obs(10, 11, true),
            obs(20, 21, false),
            obs(30, 31, true),
        ];
        assert_eq!(permits_between(&seen, at(5), at(25)).len(), 1);
        assert_eq!(
            first_deny_after(&seen, at(5)),
            Some(Duration::from_millis(16))
        );
        assert_eq!(permits(&seen).len(), 3);
        assert_eq!(permits(&seen)[1].reference, "t-10", "the request's own ref");
        assert!(seen[2].denied_for("closed") && !seen[2].denied_for("contained"));
    }
}

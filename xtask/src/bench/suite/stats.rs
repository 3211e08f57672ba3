//! Percentiles over samples.

use std::time::Duration;

/// Samples in milliseconds.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    ms: Vec<f64>,
}

impl Samples {
    pub fn new() -> Samples {
        Samples::default()
    }

    pub fn push(&mut self, d: Duration) {
        self.ms.push(d.as_secs_f64() * 1000.0);
    }

    pub fn push_ms(&mut self, ms: f64) {
        if ms.is_finite() {
            self.ms.push(ms);
        }
    }

    pub fn extend(&mut self, other: &Samples) {
        self.ms.extend_from_slice(&other.ms);
    }

    pub fn len(&self) -> usize {
        self.ms.len()
    }

    /// The `p`-th percentile (nearest rank: the smallest sample with at
    /// least p % of the samples at or below it), `None` without samples.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        if self.ms.is_empty() {
            return None;
        }
        let mut sorted = self.ms.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
    }

    pub fn p50(&self) -> Option<f64> {
        self.percentile(50.0)
    }

    pub fn p99(&self) -> Option<f64> {
        self.percentile(99.0)
    }

    pub fn max(&self) -> Option<f64> {
        self.ms.iter().copied().max_by(f64::total_cmp)
    }

    /// "p50 a, p99 b, max c over n" for notes and logs.
    pub fn summary(&self) -> String {
        match (self.p50(), self.p99(), self.max()) {
            (Some(p50), Some(p99), Some(max)) => format!(
                "p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms over {} samples",
                self.len()
            ),
            _ => "no samples".to_owned(),
        }
    }
}

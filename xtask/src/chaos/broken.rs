//! A scenario's typed failure to run: the environment under it broke (a
//! process would not start, a file could not be written, the harness gave
//! up). It fails the row like a wrong observation does, and the fleet is
//! healed before the next row; it is not a finding about mctc.

use std::fmt::Display;

#[derive(Debug, thiserror::Error)]
pub enum Broken {
    /// A step of the scenario or the rig failed.
    #[error("{step}: {cause}")]
    Step { step: String, cause: String },
    /// The shared harness (mctc-tests, whose API for tests is to panic on a
    /// broken environment) panicked; caught once, by the runner.
    #[error("the harness gave up: {0}")]
    Harness(String),
}

impl Broken {
    pub fn step(step: impl Into<String>, cause: impl Display) -> Broken {
        Broken::Step {
            step: step.into(),
            cause: cause.to_string(),
        }
    }
}

/// `result.context("swtpm reset")?`: names the step that failed.
pub trait Context<T> {
    fn context(self, step: &str) -> Result<T, Broken>;
}

impl<T, E: Display> Context<T> for Result<T, E> {
    fn context(self, step: &str) -> Result<T, Broken> {
        self.map_err(|e| Broken::step(step, e))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, step: &str) -> Result<T, Broken> {
        self.ok_or_else(|| Broken::step(step, "missing"))
    }
}

//! One tracing setup for every binary: structured fields, no colour when not
//! on a terminal (journald adds its own timestamps), level from `MCTC_LOG`
//! (then `RUST_LOG`), default `info`.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = std::env::var("MCTC_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // A second init (tests) is harmless; ignore the error it returns.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}

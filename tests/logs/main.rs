//! No personal data in logs: popgw's tracing at TRACE, captured for the whole process by
//! one global subscriber, while the gateway (`gateway`), the registry side (`registry`)
//! and a remote registry with the cache (`upstream`) run their scenarios — matches,
//! refusals, bad input, TLS refusals, faults, an audit failure. Each checks that its
//! events were traced and that no id, name, birth date or address of its people is in
//! the output (the output of every scenario: a leak in one fails them all). A binary of
//! its own: a global subscriber needs a process to itself.

#[path = "../common/mod.rs"]
mod common;

mod gateway;
mod registry;
mod upstream;

/// The process's log output from the first call on (the subscriber is installed once).
fn capture() -> common::Capture {
    static CAPTURE: std::sync::OnceLock<common::Capture> = std::sync::OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let capture = common::Capture::default();
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("popgw=trace,info"))
                .with_writer(capture.clone())
                // Plain text: what is searched for is never split by colour codes.
                .with_ansi(false)
                .init();
            capture
        })
        .clone()
}

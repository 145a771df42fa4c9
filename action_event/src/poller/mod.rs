//! The generic poller: takes events from the broker in strict priority
//! order, runs them through the registry, and settles each one (ack, retry
//! with backoff, or dead letter).
//!
//! Most apps use [`main`] from their own `src/bin/poller.rs` (the binary
//! must link the app's events); [`Poller`] is the same loop as a library.

//! The parts, each in its own file: [`config`](PollerConfig) (how it
//! runs), `run_loop` (take in priority order, one task per event),
//! `run_one` (dispatch one event and settle it), `decide` (the
//! retry-or-dead rule, a pure function), `shutdown` (stops and handoffs),
//! `cli` (the command line, one module per subcommand), `pidfile`,
//! `metrics`, `generate`.

mod cli;
mod config;
mod decide;
mod generate;
#[cfg(feature = "metrics")]
mod metrics;
pub(crate) mod pidfile;
mod report_file;
mod run_loop;
mod run_one;
mod shutdown;

pub use cli::{main, main_with_args};
pub use config::{DEFAULT_QUEUES, PollerConfig, RetryPolicy};
pub use generate::{Action, EventNames, generate_event};
#[cfg(feature = "metrics")]
pub use metrics::{DURATION_BUCKETS, Metrics, MetricsEndpoint, Observed};
pub use pidfile::{PollerInfo, PollerStatus, list_pollers, pid_path, process_alive};
pub use report_file::{read_report, report_path};
pub use run_loop::{Poller, RunSummary};
pub use shutdown::{ExitReason, Shutdown};

/// Sends panic messages to the log (`tracing`, at ERROR) instead of raw
/// text on stderr, so a `--log-format json` log stays JSON and a panic in a
/// handler is logged inside the span of its event (name, id, attempt). A
/// backtrace is added when `RUST_BACKTRACE` asks for one. [`main`] calls it;
/// an app that runs [`Poller`] itself may call it too (it replaces the
/// process's panic hook).
///
/// The poller catches every panic of a filter or handler either way: it is
/// a failure of that event, retried like an `Err`.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let message = crate::dispatch::panic_message(info.payload());
        let location = info
            .location()
            .map(|l| format!(" at {}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!(target: "panic", "panicked{location}: {message}\n{backtrace}");
        } else {
            // Not the poller's own target: the human format shows the
            // event's span in front of it.
            tracing::error!(target: "panic", "panicked{location}: {message}");
        }
    }));
}

/// A log sink the poller's unit tests read back.
#[cfg(test)]
mod test_log {
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    pub(super) struct Buf(pub(super) Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buf").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}

//! The report file: `<pid-dir>/poller.<id>.report.json`, beside the PID
//! file, holds the poller's [`PollerReport`] (what runs now, what it has run
//! since it started), rewritten every second. It is how the dashboard sees
//! the pollers of a backend that has no status requests (SQLite); RabbitMQ's
//! pollers answer status requests with the same report.
//!
//! One small write and rename a second, off the event path: the poller's
//! drain speed does not depend on it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::broker::{PollerReport, Presence};

/// How often the report file is rewritten.
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(1);

/// The report file that goes with the PID file `pid_file`.
///
/// ```
/// use std::path::{Path, PathBuf};
/// let p = action_event::poller::report_path(Path::new("tmp/pids/poller.2.pid"));
/// assert_eq!(p, PathBuf::from("tmp/pids/poller.2.report.json"));
/// ```
pub fn report_path(pid_file: &Path) -> PathBuf {
    pid_file.with_extension("report.json")
}

/// The report of the poller whose PID file is `pid_file`, when its report
/// file exists, parses, and names the PID `pid` (a report left behind by a
/// poller that is gone names another).
///
/// ```
/// let r = action_event::poller::read_report(std::path::Path::new("no/such/poller.1.pid"), 42);
/// assert!(r.is_none());
/// ```
pub fn read_report(pid_file: &Path, pid: u32) -> Option<PollerReport> {
    let bytes = std::fs::read(report_path(pid_file)).ok()?;
    serde_json::from_slice::<PollerReport>(&bytes)
        .ok()
        .filter(|r| r.pid == pid)
}

/// Stops the writer when dropped.
pub(super) struct Writer(tokio::task::AbortHandle);

impl Drop for Writer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Rewrites the report file of `pid_file` every [`REPORT_EVERY`] until the
/// returned guard drops. A write that fails is logged once, then retried
/// quietly.
pub(super) fn spawn(pid_file: &Path, presence: Arc<dyn Presence>) -> Writer {
    let path = report_path(pid_file);
    let task = tokio::spawn(async move {
        let mut warned = false;
        let mut tick = tokio::time::interval(REPORT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let report = presence.report();
            let path = path.clone();
            let written = tokio::task::spawn_blocking(move || {
                let json = serde_json::to_vec(&report).unwrap_or_default();
                super::pidfile::write_atomic(&path, &json)
            })
            .await;
            match written {
                Ok(Ok(())) => warned = false,
                Ok(Err(e)) if !warned => {
                    warned = true;
                    tracing::warn!("The dashboard may not show this poller: {e}");
                }
                _ => {}
            }
        }
    });
    Writer(task.abort_handle())
}
